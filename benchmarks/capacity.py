"""How quiet the machine was: every speed benchmark prints this beside its ratios.

Two measurements, both printed by :func:`report`:

* **over the run**: the cores that *other* processes kept busy while the benchmark ran (Linux
  ``/proc/stat``: all CPUs' busy time minus this process's and its children's own CPU time, over
  the wall time), hence the machine's free capacity = cores − that;
* **a probe**: ``threads`` busy loops of fixed work run together for about half a second; the CPU
  time they got over their wall time is the share of those cores free right now (1.00 per thread
  on a quiet machine).

A ratio measured side by side is fair even on a loaded machine only if both sides saw the same
load; these figures say how loaded it was, so a reader can tell a quiet-machine ratio from a
loaded one.
"""

from __future__ import annotations

import os
import resource
import threading
import time

__all__ = ["Capacity", "probe", "cores"]


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def _busy_total() -> tuple[float, float]:
    """(busy seconds summed over CPUs, wall-clock seconds per CPU) from /proc/stat."""
    with open("/proc/stat") as fh:
        f = [int(v) for v in fh.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    total = sum(f[:8])
    return (total - idle) / hz, total / hz / (os.cpu_count() or 1)


def _own() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _spin(seconds: float, out: list, k: int) -> None:
    t0, c0 = time.perf_counter(), time.thread_time()
    x = 0
    while time.perf_counter() - t0 < seconds:
        for i in range(2000):
            x += i * i
    out[k] = (time.thread_time() - c0) / (time.perf_counter() - t0)


def probe(threads: int = 1, seconds: float = 0.5) -> float:
    """Share of ``threads`` cores free now: CPU time / wall time of as many busy loops, averaged
    (threads spin in C-free Python under the GIL, so the probe uses processes' worth of cores only
    when ``threads`` is 1; for more it forks)."""
    if threads <= 1:
        out = [0.0]
        _spin(seconds, out, 0)
        return out[0]
    import multiprocessing as mp

    with mp.get_context("fork").Pool(threads) as pool:
        shares = pool.map(_probe_one, [seconds] * threads)
    return sum(shares) / len(shares)


def _probe_one(seconds: float) -> float:
    out = [0.0]
    th = threading.Thread(target=_spin, args=(seconds, out, 0))
    th.start()
    th.join()
    return out[0]


class Capacity:
    """Start at construction; :meth:`report` gives the lines to print (others' load over the run,
    the free capacity, the load average and a probe of ``threads`` cores)."""

    def __init__(self, threads: int = 1):
        self.threads = threads
        self.before = probe(threads)
        self.t0 = time.perf_counter()
        self.own0 = _own()
        try:
            self.busy0 = _busy_total()
        except (OSError, ValueError, IndexError):  # pragma: no cover (not Linux)
            self.busy0 = None

    def others(self) -> float | None:
        """Cores other processes kept busy since the start (None off Linux)."""
        if self.busy0 is None:
            return None
        busy1, _ = _busy_total()
        wall = time.perf_counter() - self.t0
        return max(0.0, (busy1 - self.busy0[0]) - (_own() - self.own0)) / max(wall, 1e-9)

    def report(self) -> str:
        n = cores()
        others = self.others()
        after = probe(self.threads)
        load = " ".join(f"{v:.2f}" for v in os.getloadavg())
        over = "n/a" if others is None else f"{others:.2f} cores busy with other work"
        free = "n/a" if others is None else f"{max(0.0, n - others):.2f} of {n} cores free"
        quiet = others is not None and others < 0.25 and min(self.before, after) > 0.9
        return (
            f"machine: {n} cores; over the run, {over} ({free}); load average {load}; "
            f"probe of {self.threads} core(s) before/after: {self.before:.2f}/{after:.2f} of a "
            f"core each -> {'QUIET' if quiet else 'LOADED'} machine"
        )
