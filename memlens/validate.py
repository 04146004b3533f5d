"""Argument checks shared by every entry point: each refuses bad input with a ``ValueError`` that
names the field, its value and what is allowed, before any work is done. No silent coercion: a
float is not a seed, a string is not a number, ``"no"`` is a bool only where text is parsed."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

__all__ = [
    "integer",
    "positive_int",
    "seed",
    "real",
    "boolean",
    "parse_bool",
    "finite_tensor",
]


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


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
    bad = ~torch.isfinite(t)
    if mask is not None:
        bad &= (mask > 0).view(*mask.shape, *([1] * (t.ndim - 2)))
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0].tolist())
        raise ValueError(
            f"{name} contains NaN or inf (first at index {list(idx)}, value "
            f"{float(t[idx])}); memlens needs finite data"
        )
