"""Shared figure helpers: a headless pyplot, log axes with plain tick labels, and a partial-run
stamp. The sweep figures live in :mod:`memlens.sweeps.figures`; probes and results draw their
own with these helpers.
"""

from __future__ import annotations

import math
import os

__all__ = ["pyplot", "plain_number", "PlainLogFormatter", "log_axis", "stamp_partial"]


def pyplot():
    """``matplotlib.pyplot``, on the Agg backend unless the session already chose one."""
    import matplotlib

    if os.environ.get("MPLBACKEND") is None and matplotlib.get_backend().lower() != "agg":
        try:
            matplotlib.use("Agg")
        except Exception:  # an interactive session already chose a backend
            pass
    import matplotlib.pyplot as plt

    return plt


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def plain_number(v: float) -> str:
    """A tick label a reader takes in at a glance: ``0.003``, ``1.25``, ``30``, ``2000``,
    ``5×10⁻⁵``, ``10⁶`` (never ``3×10⁰``); at most three significant digits."""
    if v == 0 or not math.isfinite(v):
        return f"{v:g}"
    exp = math.floor(math.log10(abs(v)) + 1e-9)
    sig = next((k for k in (1, 2, 3) if abs(float(f"{v:.{k}g}") - v) <= 1e-9 * abs(v)), 3)
    if -3 <= exp <= 4:
        return f"{float(f'{v:.{sig}g}'):.{max(0, sig - 1 - exp)}f}"
    mant = f"{v / 10**exp:.{sig}g}"
    power = f"10{str(exp).translate(_SUPERSCRIPT)}"
    if mant in ("1", "-1"):
        return ("-" if v < 0 else "") + power
    return f"{mant}×{power}"


def _log_formatter_class():
    from matplotlib.ticker import LogFormatterSciNotation

    class _Plain(LogFormatterSciNotation):
        """Matplotlib's choice of which log ticks to label, with :func:`plain_number` labels."""

        def __call__(self, x, pos=None):
            if not super().__call__(x, pos):
                return ""
            return plain_number(x)

    return _Plain


def PlainLogFormatter(**kwargs):  # noqa: N802 (a class, built lazily so matplotlib loads late)
    """A log-axis tick formatter: matplotlib's choice of labelled ticks, :func:`plain_number`
    labels (``kwargs`` as for ``LogFormatterSciNotation``)."""
    return _log_formatter_class()(**kwargs)


def log_axis(ax, which: str = "x") -> None:
    """Make ``ax``'s x, y or both axes logarithmic, with plain tick labels (major and minor)."""
    if which not in ("x", "y", "both"):
        raise ValueError(f"which must be 'x', 'y' or 'both', got {which!r}")
    for name in ("x", "y") if which == "both" else (which,):
        axis = ax.xaxis if name == "x" else ax.yaxis
        (ax.set_xscale if name == "x" else ax.set_yscale)("log")
        axis.set_major_formatter(PlainLogFormatter())
        axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))


def stamp_partial(fig, done: int, total: int) -> bool:
    """Stamp a figure of a run that is not finished: "PARTIAL: 7 of 36 cells" in red, top left.
    Returns whether it stamped."""
    if done >= total:
        return False
    fig.text(
        0.01,
        0.99,
        f"PARTIAL: {done} of {total} cells finished",
        color="tab:red",
        fontsize=9,
        fontweight="bold",
        ha="left",
        va="top",
    )
    return True
