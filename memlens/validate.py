"""Argument checks shared by every entry point: each refuses bad input with a ``ValueError`` that
names the field, its value and what is allowed, before any work is done. No silent coercion: a
float is not a seed, a string is not a number, ``"no"`` is a bool only where text is parsed."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "check_output_file",
    "check_output_dir",
    "is_int",
    "integer",
    "positive_int",
    "seed",
    "real",
    "boolean",
    "parse_bool",
    "finite_tensor",
    "rows",
    "spec_values",
    "memory",
    "available_memory",
]


def is_int(v: Any) -> bool:
    """Whether ``v`` is an int (Python or numpy), not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


_is_int = is_int


def integer(name: str, v: Any, low: int | None = None, high: int | None = None) -> int:
    """An int (not a bool, not a float) in ``[low, high]``."""
    if not _is_int(v):
        raise ValueError(f"{name} must be an int, got {v!r} ({type(v).__name__})")
    if (low is not None and v < low) or (high is not None and v > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {v!r}")
    return int(v)


def positive_int(name: str, v: Any) -> int:
    if not _is_int(v) or v <= 0:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def seed(name: str, v: Any) -> int:
    """A seed: any int (a float such as 1.7 is refused rather than truncated)."""
    if not _is_int(v):
        raise ValueError(f"{name} (a random seed) must be an int, got {v!r} ({type(v).__name__})")
    return int(v)


def real(
    name: str,
    v: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real number (not a bool, not a string) in the given range."""
    if isinstance(v, (bool, np.bool_, str, bytes)) or not isinstance(v, numbers.Real):
        raise ValueError(f"{name} must be a number, got {v!r} ({type(v).__name__})")
    x = float(v)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    bad = (low is not None and (x < low or (low_open and x == low))) or (
        high is not None and (x > high or (high_open and x == high))
    )
    if bad:
        lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
        raise ValueError(f"{name} must be in {lo}, {hi}, got {v!r}")
    return x


def boolean(name: str, v: Any) -> bool:
    """A bool (``True``/``False``; numpy bools too). Strings are refused: use :func:`parse_bool`."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    raise ValueError(f"{name} must be True or False, got {v!r} ({type(v).__name__})")


_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


def parse_bool(name: str, text: Any) -> bool:
    """A bool from text (``true/false``, ``1/0``, ``yes/no``, ``on/off``; any case); a bool passes
    through; anything else is refused."""
    if isinstance(text, (bool, np.bool_)):
        return bool(text)
    if _is_int(text) and text in (0, 1):
        return bool(text)
    if isinstance(text, str) and text.strip().lower() in _TRUE | _FALSE:
        return text.strip().lower() in _TRUE
    raise ValueError(f"{name} must be true or false (or 1/0, yes/no), got {text!r}")


def finite_tensor(name: str, t: Any, mask: Any = None) -> None:
    """Refuse NaN or inf in a tensor, naming it and the first bad index. ``mask`` (``[rows,
    inst]``, 0 on padding) limits the check to real rows of a ``[rows, inst, ...]`` tensor."""
    import torch

    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        return
    if bool(torch.isfinite(t).all()):  # the common case, in one pass
        return
    bad = ~torch.isfinite(t)
    if mask is not None:
        bad &= (mask > 0).view(*mask.shape, *([1] * (t.ndim - 2)))
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0].tolist())
        raise ValueError(
            f"{name} contains NaN or inf (first at index {list(idx)}, value "
            f"{float(t[idx])}); memlens needs finite data"
        )


def rows(name: str, batch: Any) -> None:
    """A batch has at least one point, and its ``lengths`` (padding marks) lie in [1, rows]."""
    n = batch.inputs.shape[0] if batch.inputs.ndim else 0
    if n == 0:
        raise ValueError(f"{name} has no points (shape {tuple(batch.inputs.shape)}); give T >= 1")
    lengths = batch.lengths
    if lengths is None:
        return
    if lengths.ndim != 1 or lengths.shape[0] != batch.inputs.shape[1]:
        raise ValueError(
            f"{name} lengths must hold one count per instance ({batch.inputs.shape[1]}), got "
            f"shape {tuple(lengths.shape)}"
        )
    bad = (lengths < 1) | (lengths > n)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"{name} lengths must be in [1, {n}] (real rows per instance), got {int(lengths[i])} "
            f"for instance {i}"
        )


def _kind_ok(default: Any, v: Any) -> tuple[bool, str] | None:
    if isinstance(default, bool):
        return isinstance(v, (bool, np.bool_)), "a bool (true or false)"
    if isinstance(default, numbers.Integral):
        return _is_int(v), "an int"
    if isinstance(default, numbers.Real):
        ok = isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
        return ok and math.isfinite(float(v)), "a finite number"
    if isinstance(default, str):
        return isinstance(v, str), "a string"
    return None


def spec_values(spec: Mapping, defaults: Mapping, where: str = "") -> None:
    """Each value of a data-and-model spec has its default's kind (a bool is a bool, an int an
    int, a number a finite number, a string a string: ``normalize="no"`` is refused, not read as
    True); ``T`` (if given) is a positive int, ``seed`` (if given) an int, ``n_test`` positive and
    ``sparsity`` in [0, 1). ``where`` is appended to messages (e.g. the sweep cell)."""
    if "T" in spec and (not _is_int(spec["T"]) or spec["T"] <= 0):
        raise ValueError(f"T (training-set size) must be a positive int, got {spec['T']!r}{where}")
    if "seed" in spec and not _is_int(spec["seed"]):
        raise ValueError(f"seed must be an int, got {spec['seed']!r}{where}")
    for k, d in defaults.items():
        if k not in spec:
            continue
        check = _kind_ok(d, spec[k])
        if check is not None and not check[0]:
            raise ValueError(f"{k} must be {check[1]}, got {spec[k]!r}{where}")
    n_test = spec.get("n_test")
    if n_test is not None and (not _is_int(n_test) or n_test <= 0):
        raise ValueError(f"n_test (test-set size) must be a positive int, got {n_test!r}{where}")
    s = spec.get("sparsity")
    if isinstance(s, numbers.Real) and not 0 <= s < 1:
        raise ValueError(f"sparsity must be in [0, 1) (0 = dense), got {s!r}{where}")


def available_memory() -> int | None:
    """Bytes of memory available now (``MemAvailable`` of /proc/meminfo; None if unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory(what: str, n_bytes: int) -> None:
    """Refuse, before allocating, a tensor of ``n_bytes`` that would not fit in the memory
    available now; ``what`` says which argument asked for it (e.g. ``"T=10**13 points"``)."""
    avail = available_memory()
    if avail is not None and n_bytes > avail:
        raise ValueError(
            f"{what} needs {n_bytes / 2**30:.3g} GiB of memory but {avail / 2**30:.3g} GiB are "
            "available; ask for fewer points"
        )


# ----------------------------------------------------------------------------- output paths


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    return p


def check_output_file(option: str, path: str | os.PathLike, force: bool = False) -> Path:
    """A file we are about to write: not a folder, not an existing file unless ``force``, and in a
    writable folder (created later if missing, not now)."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file path, e.g. {p / 'model.pt'}")
    if p.exists() and not force:
        raise ValueError(f"{option} {path} exists; pass --force to overwrite it")
    base = _nearest_existing(p.parent)
    if not base.is_dir():
        raise ValueError(f"{option} {path}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: cannot write into {base} (permission denied)")
    return p


def check_output_dir(option: str, path: str | os.PathLike) -> Path:
    """A folder we are about to write into: a folder (or creatable) and writable."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{option} {path} is a file, not a folder")
    base = _nearest_existing(p)
    if not base.is_dir():
        raise ValueError(f"{option} {path}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: cannot write into {base} (permission denied)")
    return p
