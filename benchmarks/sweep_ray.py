"""A sweep through the Ray backend on 2 workers vs the local backend on one thread, in one run.

    OMP_NUM_THREADS=1 python benchmarks/sweep_ray.py                 # ~5 min on 2 shared cores
    OMP_NUM_THREADS=1 python benchmarks/sweep_ray.py --steps 1000 --repeats 1   # the cpu preset

The grid is the bottleneck ``cpu`` preset (12 values of T x 3 seeds, n = 1000, S = 0.99, packed
into 6 groups) with ``--steps`` training steps (the preset's 1000 take ~10 s of compute, too
little to amortise a cluster's start; the default 4000 takes ~1 min). The fair baseline on a
2-core machine is the local backend single-threaded (``OMP_NUM_THREADS=1``; the thread policy would
also pick one thread for these groups): it runs the 6 groups one after another on one core, Ray
runs them as 6 tasks of 1 CPU on a 2-CPU local cluster. The local and Ray runs alternate,
``--repeats`` times, each into a fresh folder; the figures are medians.

Printed:

* **ratio** = local wall / Ray wall (> 1: Ray is faster); 2 is the most 2 workers can give, and
  the 6 unequal groups (the largest is ~1/3 of the work) cap it lower: the best 2-worker schedule
  of the measured group times is printed beside it as that bound;
* **per-task overhead**, two ways: (a) ``N`` no-op tasks through the backend (a task that returns
  an empty result: scheduling, the job's pickle, ``ray.wait``), wall x workers / N; (b) the real
  sweep's wall minus the ideal (the best 2-worker schedule of the groups' own measured compute
  plus the driver's checks and writes as measured in the local run), per task;
* the cluster's start (``ray.init``), paid once per sweep when the backend starts a local cluster
  (not when it joins a running one), reported apart and not in the ratio;
* the machine's parallel capacity: a fixed single-threaded loop in 1 process vs 2 processes at
  once, 2 x t1 / t2: what any 2-worker scheme can get from the machine at that moment (2.00 on an
  idle 2-core machine). On a machine shared with other jobs it is lower, and so is the ratio.

Each task asks for one CPU (``max_cpus_per_task=1``: 2 workers; by the thread policy's work rule
the largest group would ask for 2 CPUs and run alone). Both backends are warmed first (a 5-step
sweep each: worker processes, imports, first calls).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: the driver and the Ray workers


def _noop(job):
    from memlens.sweeps.cells import GroupResult

    return GroupResult(job.index, [], None, [])


def _best_schedule(times: list[float], workers: int) -> float:
    """The makespan of the best assignment of ``times`` to ``workers`` (exhaustive: few groups)."""
    import itertools

    best = float("inf")
    for assign in itertools.product(range(workers), repeat=len(times)):
        loads = [0.0] * workers
        for t, w in zip(times, assign, strict=True):
            loads[w] += t
        best = min(best, max(loads))
    return best


def _spin(seconds_of_work: int, q) -> None:
    """A fixed CPU-bound loop (one thread); puts its wall time."""
    import torch

    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    t = time.perf_counter()
    for _ in range(seconds_of_work):
        a = torch.tanh(a @ a * 1e-2)
    q.put(time.perf_counter() - t)


def parallel_capacity(iters: int = 3000) -> float:
    """How many cores two processes get right now: 2 x (one process's time alone) / (the time of
    each of two run together). 2.0 on an idle 2-core machine; less when others hold the cores."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()

    def run(n):
        ps = [ctx.Process(target=_spin, args=(iters, q)) for _ in range(n)]
        for p in ps:
            p.start()
        out = [q.get() for _ in ps]
        for p in ps:
            p.join()
        return max(out)

    alone = run(1)
    return 2 * alone / run(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--noop-tasks", type=int, default=200)
    args = ap.parse_args()

    import ray

    import memlens
    from memlens.registry import get_bundle
    from memlens.sweeps.cells import GroupJob
    from memlens.sweeps.grid import make_cells, normalise, plan_groups
    from memlens.sweeps.ray_backend import LOCAL_OBJECT_STORE, RayBackend

    kw = {"preset": "cpu", "train": {"steps": args.steps}, "progress": False}
    b = get_bundle("bottleneck")
    p = b.preset("cpu")
    cells = tuple(
        plan_groups(b, make_cells(*normalise(b, p["grid"], p["task"], p["train"])))[0]["cells"]
    )
    root = Path(tempfile.mkdtemp(prefix="sweep_ray_"))
    workers = 2
    t0 = time.perf_counter()
    ray.init(
        num_cpus=workers,
        include_dashboard=False,
        object_store_memory=LOCAL_OBJECT_STORE,
        log_to_driver=False,
    )
    start = time.perf_counter() - t0

    capacity = parallel_capacity()
    # one CPU per task: 2 workers (the biggest group would otherwise ask for 2 CPUs, by the work
    # rule of the thread policy, and run alone with 2 threads)
    backend = RayBackend(max_cpus_per_task=1)
    # warm both (worker processes, imports, first calls) so that no timed repeat pays for it
    warm = {**kw, "train": {"steps": 5, "warmup": 1}}
    memlens.sweep("bottleneck", out=root / "warm-local", **warm)
    memlens.sweep("bottleneck", out=root / "warm-ray", backend=backend, **warm)

    local, remote, ideal, drivers, sums = [], [], [], [], []
    try:
        for rep in range(args.repeats):
            t = time.perf_counter()
            rows = memlens.sweep("bottleneck", out=root / f"local{rep}", **kw)
            local.append(time.perf_counter() - t)
            groups = {r["group"]: r["group_seconds"] for r in rows}
            drivers.append(local[-1] - sum(groups.values()))  # checks, packing plan, writes
            t = time.perf_counter()
            rrows = memlens.sweep("bottleneck", out=root / f"ray{rep}", backend=backend, **kw)
            remote.append(time.perf_counter() - t)
            rgroups = {r["group"]: r["group_seconds"] for r in rrows}
            sums.append(sum(rgroups.values()))
            ideal.append(_best_schedule(list(rgroups.values()), workers) + drivers[-1])
            assert len(rrows) == len(rows)
            print(
                f"repeat {rep}: local {local[-1]:.1f} s, ray {remote[-1]:.1f} s "
                f"(ratio {local[-1] / remote[-1]:.2f}); groups: local sum "
                f"{sum(groups.values()):.1f} s, in ray tasks sum {sums[-1]:.1f} s; "
                f"load avg {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        n = args.noop_tasks
        jobs = [GroupJob("bottleneck", i, cells) for i in range(n)]  # the job of a real group
        noop = []
        for _ in range(3):
            t = time.perf_counter()
            got = list(RayBackend(work=_noop).run(jobs))
            noop.append(time.perf_counter() - t)
            assert len(got) == n
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)

    med = statistics.median
    n_groups = len(groups)
    ratio = med(local) / med(remote)
    bound = med(local) / med(ideal)
    print()
    print(f"bottleneck cpu preset, {args.steps} steps: 36 cells in {n_groups} groups")
    print(f"local backend, 1 thread:      {med(local):7.1f} s (median of {args.repeats})")
    print(f"ray backend, 2 workers:       {med(remote):7.1f} s (median of {args.repeats})")
    print(f"ratio local / ray:            {ratio:7.2f}x  (best 2-worker schedule: {bound:.2f}x)")
    print(f"ray cluster start (ray.init): {start:7.1f} s, once per sweep on a local cluster")
    print(
        f"machine's parallel capacity:  {capacity:7.2f} cores for 2 processes now "
        "(2.00 on an idle 2-core machine; a fixed loop, 1 vs 2 processes)"
    )
    print(
        f"per-task overhead (a) no-op:  {med(noop) * workers / n * 1e3:7.1f} ms "
        f"({n} no-op tasks in {med(noop):.2f} s on {workers} workers, median of 3)"
    )
    over = (med(remote) - med(ideal)) / n_groups
    print(
        f"per-task overhead (b) sweep:  {over * 1e3:7.1f} ms "
        f"((ray wall {med(remote):.1f} s - ideal {med(ideal):.1f} s) / {n_groups} tasks)"
    )


if __name__ == "__main__":
    main()
