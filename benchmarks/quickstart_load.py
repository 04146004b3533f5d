"""`memlens quickstart` on a quiet machine and on a busy one, side by side in one run.

A user's machine is rarely idle. This runs the README's main command (`memlens quickstart`, as
installed, with no thread settings in the environment: memlens's own thread policy decides) on a
quiet machine, then again while two busy competing processes (pure-Python spin loops, one per core
of a 2-core machine) share the same cores, alternating quiet and loaded runs, and prints the median
wall time of each and their ratio. The target: loaded ≤ 2x quiet.

    python benchmarks/quickstart_load.py [--repeats 3] [--competitors 2]

Without a thread policy PyTorch's default (one thread per core) made the loaded run 16x slower
(692 s against 43 s) on the development machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPIN = "import time\nt = time.time()\nwhile time.time() - t < 3600:\n    pass\n"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MEMLENS_THREADS")


def quickstart_seconds(out: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env["MPLBACKEND"] = "Agg"
    cmd = [sys.executable, "-m", "memlens.cli", "quickstart", "--out", str(out), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"memlens quickstart failed:\n{proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="runs per condition (default 3)")
    ap.add_argument(
        "--competitors", type=int, default=2, help="busy processes in the loaded runs (default 2)"
    )
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPU(s); {args.repeats} quiet and {args.repeats} loaded runs")
    quiet, loaded = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            quiet.append(quickstart_seconds(Path(tmp) / f"quiet{r}"))
            print(f"  quiet run {r + 1}: {quiet[-1]:.1f} s", flush=True)
            spinners = [
                subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(args.competitors)
            ]
            try:
                time.sleep(1.0)  # let the competitors occupy the cores
                loaded.append(quickstart_seconds(Path(tmp) / f"loaded{r}"))
            finally:
                for p in spinners:
                    p.kill()
                    p.wait()
            print(f"  loaded run {r + 1}: {loaded[-1]:.1f} s", flush=True)
    q, ld = statistics.median(quiet), statistics.median(loaded)
    print(
        f"quickstart: {q:.1f} s quiet, {ld:.1f} s with {args.competitors} busy processes "
        f"= {ld / q:.2f}x (target <= 2x)"
    )


if __name__ == "__main__":
    main()
