"""Regenerate the README's quickstart numbers and figures from a quickstart run.

    python scripts/update_readme.py            # runs memlens quickstart --out memlens-quickstart
    python scripts/update_readme.py --from DIR # uses an existing run's DIR/results.json

Rewrites the block between ``<!-- quickstart:begin -->`` and ``<!-- quickstart:end -->`` in
README.md with :func:`memlens.app.quickstart_report.readme_section` and copies the run's figures to
``docs/figures/quickstart_*.png``. ``tests/memlens/test_quickstart.py`` checks that the README's
numbers agree with a fresh run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- quickstart:begin -->", "<!-- quickstart:end -->"
FIGURES = ["dictionary", "memorised_roc", "survival", "llc", "training"]


def replace_block(text: str, block: str) -> str:
    """``text`` with the marked block replaced by ``block``."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"README.md lacks the markers {BEGIN} ... {END}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def readme_block(text: str) -> str:
    """The marked block of ``text``."""
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="run", default=None, help="an existing quickstart folder")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from memlens.app.quickstart_report import readme_section

    run = Path(args.run) if args.run else ROOT / "memlens-quickstart"
    if args.run is None:
        cmd = [sys.executable, "-m", "memlens.cli", "quickstart", "--out", str(run),
               "--seed", str(args.seed), "--no-progress"]  # fmt: skip
        subprocess.run(cmd, check=True)
    numbers = json.loads((run / "results.json").read_text())
    readme = ROOT / "README.md"
    readme.write_text(replace_block(readme.read_text(), readme_section(numbers)))
    for name in FIGURES:
        shutil.copyfile(run / f"{name}.png", ROOT / "docs" / "figures" / f"quickstart_{name}.png")
    print(f"README.md's quickstart block and docs/figures/quickstart_*.png updated from {run}")


if __name__ == "__main__":
    main()
