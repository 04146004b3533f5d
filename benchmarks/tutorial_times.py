"""Wall time of every tutorial in each mode, as a user runs it (``python tutorials/NN_*.py`` in a
fresh folder; fast mode is ``MEMLENS_FAST=1``). Prints a table and writes it as JSON.

    python benchmarks/tutorial_times.py [--modes fast,default] [--json tutorial_times.json]

No thread settings are passed: memlens's own policy chooses. The figures quoted in
tutorials/README.md come from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from capacity import Capacity  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run(script: Path, fast: bool, timeout: float, log: Path | None = None) -> tuple[float, int]:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    env.pop("MEMLENS_FAST", None)
    if fast:
        env["MEMLENS_FAST"] = "1"
    with tempfile.TemporaryDirectory() as cwd:
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, str(script)], cwd=cwd, env=env,
                                  capture_output=True, text=True, timeout=timeout)  # fmt: skip
            code = proc.returncode
            if log is not None:
                log.write_text(proc.stdout + proc.stderr)
        except subprocess.TimeoutExpired:
            code = 124
        return time.perf_counter() - t0, code


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="fast,default")
    ap.add_argument("--only", default=None, help="comma-separated tutorial numbers, e.g. 03,05")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--json", default="tutorial_times.json")
    ap.add_argument("--logs", default=None, help="folder for each run's output")
    args = ap.parse_args()
    scripts = sorted((ROOT / "tutorials").glob("0*.py"))
    if args.only:
        scripts = [s for s in scripts if s.name[:2] in args.only.split(",")]
    cap = Capacity()
    table = {}
    for script in scripts:
        for mode in args.modes.split(","):
            log = None
            if args.logs:
                Path(args.logs).mkdir(parents=True, exist_ok=True)
                log = Path(args.logs) / f"{script.stem}-{mode}.log"
            secs, code = run(script, mode == "fast", args.timeout, log)
            table.setdefault(script.name, {})[mode] = {"seconds": round(secs, 1), "exit": code}
            print(f"{script.name:42s} {mode:8s} {secs:7.1f} s  exit {code}", flush=True)
    table["machine"] = cap.report()
    print(table["machine"])
    Path(args.json).write_text(json.dumps(table, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
