"""How many CPU threads memlens's training and sampling use: a policy inside memlens, not a tip.

PyTorch's default (one thread per core) makes these tiny models many times slower when the cores
are shared: every parallel region waits for its slowest thread, and on a busy machine that thread
is waiting for a core. So memlens decides per call (``memlens.train``, ``memlens.temper`` and
everything built on them: sweeps, the quickstart, the CLI, the tutorials):

* **one thread** unless a step touches at least :data:`PARALLEL_WORK` activation elements (batch x
  instances x width), below which extra threads cost more than they save even on an idle machine
  (``benchmarks/train_step.py --threads 1`` and ``--threads 2`` compare the two);
* above it, **one thread per idle core**: cores not kept busy by *other* processes over the last
  :data:`SAMPLE_SECONDS` (read from ``/proc/stat`` minus this process's own time), so a busy
  machine still gets one thread.

The user always wins: ``MEMLENS_THREADS=N`` fixes the count; ``OMP_NUM_THREADS`` (or
``MKL_NUM_THREADS``) set in the environment, or a ``torch.set_num_threads`` call made after
importing memlens, leave PyTorch's setting alone. The previous count is restored after each call.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "PARALLEL_WORK",
    "choose",
    "policy",
    "managed",
    "other_busy_cores",
    "record_initial",
]

#: activation elements per step from which a second thread can pay (benchmarks/train_step.py)
PARALLEL_WORK = 1 << 22
#: how long the idle-core measurement samples the machine
SAMPLE_SECONDS = 0.05
ENV = "MEMLENS_THREADS"

_state: dict[str, Any] = {"initial": None, "ours": None}


def record_initial() -> None:
    """Remember PyTorch's thread count before memlens sets any (called when memlens's model code
    is imported), so that a later ``torch.set_num_threads`` by the user is recognised."""
    if _state["initial"] is None:
        import torch

        _state["initial"] = torch.get_num_threads()


def _torch():
    import torch

    record_initial()
    return torch


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _env_threads() -> int | None:
    raw = os.environ.get(ENV)
    if raw is None or raw.strip() == "":
        return None
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"{ENV} must be a positive int (a thread count), got {raw!r}") from None
    if n < 1:
        raise ValueError(f"{ENV} must be a positive int (a thread count), got {raw!r}")
    return n


def _user_decides() -> bool:
    """The environment or an explicit ``torch.set_num_threads`` fixed the count already."""
    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"):
        return True
    torch = _torch()
    now = torch.get_num_threads()
    return now != _state["initial"] and now != _state["ours"]


def _busy_jiffies() -> tuple[float, float, float]:
    """(busy jiffies of all CPUs, total jiffies per CPU, this process's jiffies)."""
    with open("/proc/stat") as fh:
        fields = [float(v) for v in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])
    with open("/proc/self/stat") as fh:
        own = fh.read().rsplit(")", 1)[1].split()
    mine = float(own[11]) + float(own[12])  # utime + stime
    return total - idle, total / max(1, os.cpu_count() or 1), mine


def other_busy_cores(seconds: float = SAMPLE_SECONDS) -> float:
    """How many cores other processes kept busy over the last ``seconds`` (Linux ``/proc``;
    elsewhere the 1-minute load average)."""
    try:
        b0, t0, m0 = _busy_jiffies()
        time.sleep(seconds)
        b1, t1, m1 = _busy_jiffies()
    except (OSError, ValueError, IndexError):
        try:
            return float(os.getloadavg()[0])
        except OSError:  # pragma: no cover
            return 0.0
    elapsed = max(t1 - t0, 1e-9)  # jiffies per CPU
    return max(0.0, (b1 - b0) - (m1 - m0)) / elapsed


def choose(work: int) -> int | None:
    """Threads for calls whose step touches ``work`` activation elements; None leaves PyTorch's
    setting alone (the user decided)."""
    env = _env_threads()
    if env is not None:
        return env
    if _user_decides():
        return None
    cores = _cores()
    if cores < 2 or work < PARALLEL_WORK:
        return 1
    idle = cores - other_busy_cores()
    return max(1, min(cores, int(idle + 0.25)))


@contextlib.contextmanager
def policy(work: int) -> Iterator[int]:
    """Run the block with the policy's thread count for ``work``; restores the previous count."""
    torch = _torch()
    n = choose(work)
    before = torch.get_num_threads()
    if n is None or n == before:
        yield before
        return
    torch.set_num_threads(n)
    _state["ours"] = n
    try:
        yield n
    finally:
        if torch.get_num_threads() == n:  # the block did not change it itself
            torch.set_num_threads(before)
            _state["ours"] = before


def managed(work: Callable[..., int]) -> Callable:
    """Decorator: run the function under :func:`policy`, with ``work(*args, **kwargs)`` the
    activation elements one of its steps touches (an estimate; errors count as small)."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                w = int(work(*args, **kwargs))
            except Exception:  # bad arguments: let the function itself refuse them
                w = 0
            with policy(w):
                return fn(*args, **kwargs)

        return wrapper

    return deco
