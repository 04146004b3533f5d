"""Start-up of the ``memlens`` command: ``memlens --help`` and a subcommand's ``--help`` against
importing what a command's work needs (torch, transformer_lens, the models), median of 5 each, in
one run. Target: ``memlens --help`` under 1 s.

    python benchmarks/startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

from capacity import Capacity


def median_seconds(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cap = Capacity()
    exe = shutil.which("memlens") or sys.exit("memlens is not installed (pip install -e .)")
    helps = {
        "memlens --help": median_seconds([exe, "--help"], args.repeats),
        "memlens temper --help": median_seconds([exe, "temper", "--help"], args.repeats),
    }
    heavy = median_seconds(
        [sys.executable, "-c", "import memlens.training, toy_models, memlens.sampling"],
        args.repeats,
    )
    for name, s in helps.items():
        print(f"{name}: {s:.3f} s (median of {args.repeats}; target < 1 s)")
    print(f"importing torch + transformer_lens + the models: {heavy:.2f} s")
    print(cap.report())
    print(f"memlens --help: {helps['memlens --help']:.2f} s vs {heavy:.2f} s for the imports "
          f"= {heavy / helps['memlens --help']:.1f}x faster than importing first")  # fmt: skip


if __name__ == "__main__":
    main()
