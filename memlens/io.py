"""Checkpoints and results on disk.

Every whole-file write is atomic: a temporary file ``.NAME.*.tmp`` beside the target, fsynced, then
``os.replace``; :func:`clean_tmp` removes the ones a killed writer left behind. Tables grow by
:func:`append_jsonl`, which adds complete lines in one ``write`` (a crash leaves at most a torn last
line, which :func:`read_jsonl_tolerant` drops). Files are created with the mode the umask allows,
like any other program's (``0o666 & ~umask``).
"""

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
    "read_jsonl_tolerant",
    "clean_tmp",
    "file_digest",
    "umask",
    "jsonable",
    "number",
    "dumps",
    "save_checkpoint",
    "load_checkpoint",
]

CHECKPOINT_FORMAT = "memlens-checkpoint-v1"


TMP_SUFFIX = ".tmp"


def umask() -> int:
    """The process's current umask (read from ``/proc`` where possible, without changing it)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: read it the only portable way, and put it straight back
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file next to ``path``; rename it over ``path`` only if the block succeeds.
    The file gets the mode an ordinary ``open`` would give it (``0o666 & ~umask``), not
    ``mkstemp``'s 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
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
    """The JSON in ``path``; a ``ValueError`` naming the file if it is not JSON."""
    with open(path) as fh:
        try:
            return json.load(fh)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc


def append_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Append rows to a JSONL table: complete lines in one ``os.write`` on an ``O_APPEND``
    descriptor, then ``fsync``. Nothing already in the table is rewritten; a crash leaves at most
    a torn last line, which :func:`read_jsonl_tolerant` drops. (Concurrent writers still need a
    lock: the sweep store holds one.)"""
    if not rows:
        return
    data = "".join(dumps(r, sort_keys=True) + "\n" for r in rows).encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        view = memoryview(data)
        while view:  # a regular file takes it all in one write; loop only on a short write
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Every row of a JSONL table ([] if there is none); a bad line raises, naming file and line.
    Use :func:`read_jsonl_tolerant` to drop torn or corrupt lines instead."""
    rows, bad = read_jsonl_tolerant(path)
    if bad:
        lineno, text, why = bad[0]
        raise ValueError(f"{path} line {lineno} is not a JSON row ({why}): {text[:80]!r}")
    return rows


def read_jsonl_tolerant(
    path: str | os.PathLike,
) -> tuple[list[dict], list[tuple[int, str, str]]]:
    """``(rows, bad)``: the rows of a JSONL table, and ``(line number, text, reason)`` of every
    line that is not a complete JSON object (a torn last line lacks its newline)."""
    path = Path(path)
    if not path.exists():
        return [], []
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")
    rows, bad = [], []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if i == len(lines):  # no newline after it: the write that made it never finished
            bad.append((i, line, f"torn last line, {len(line.encode())} bytes, no newline"))
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append((i, line, f"invalid JSON: {exc}"))
            continue
        if not isinstance(row, dict):
            bad.append((i, line, "not a JSON object"))
            continue
        rows.append(row)
    return rows, bad


def clean_tmp(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files (``.NAME.*.tmp``) that writes killed before their rename left
    in ``folder``; returns what was removed. Call it only while no other writer is active (the
    sweep store holds its lock)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    gone = []
    for p in folder.glob(f".*{TMP_SUFFIX}"):
        if p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                gone.append(p)
    return gone


def file_digest(path: str | os.PathLike) -> tuple[int, str]:
    """``(size in bytes, sha256 hex digest)`` of a file."""
    import hashlib

    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


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
