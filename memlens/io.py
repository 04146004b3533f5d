"""Checkpoints and results on disk. Every write is atomic: a temporary file, then ``os.replace``."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

__all__ = [
    "atomic_open",
    "atomic_write_text",
    "write_json",
    "read_json",
    "append_jsonl",
    "read_jsonl",
    "jsonable",
    "number",
    "dumps",
    "save_checkpoint",
    "load_checkpoint",
]

CHECKPOINT_FORMAT = "memlens-checkpoint-v1"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file next to ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def jsonable(obj: Any) -> Any:
    """Convert tensors, numpy values, dataclasses and tuples into strict-JSON Python values.

    Non-finite floats have no JSON token: NaN becomes ``None`` (null) and ±inf the strings
    ``"inf"`` / ``"-inf"``; :func:`number` reads any of them back as a float.
    """
    import numpy as np

    if isinstance(obj, torch.Tensor):
        return jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if obj != obj else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, Path):
        return str(obj)
    return obj


def number(v: Any) -> float:
    """A float from a value written by :func:`jsonable`: ``None`` is NaN, ``"inf"`` is inf."""
    if v is None:
        return math.nan
    if isinstance(v, str) and v in ("inf", "-inf"):
        return float(v)
    return float(v)


def dumps(obj: Any, **kw: Any) -> str:
    """Strict JSON (no NaN/Infinity tokens) of ``jsonable(obj)``."""
    return json.dumps(jsonable(obj), allow_nan=False, **kw)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as fh:
        return json.load(fh)


def append_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Append rows to a JSONL table atomically: the whole file is rewritten through a temp file,
    so a reader never sees half a line, and a crash leaves the previous table intact."""
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    new = "".join(dumps(r, sort_keys=True) + "\n" for r in rows)
    atomic_write_text(path, old + new)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """``torch.save`` through a temporary file, so a crash never leaves half a checkpoint."""
    payload = {"format": CHECKPOINT_FORMAT, **payload}
    with atomic_open(path, "wb") as fh:
        torch.save(payload, fh)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a clear ``ValueError`` if it is not one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{path} is not a readable memlens checkpoint (truncated or corrupt?): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a memlens checkpoint (missing format {CHECKPOINT_FORMAT!r})"
        )
    return payload
