"""Regenerate the README's fact-capacity figure, ``docs/figures/facts_capacity.png``: facts stored
against parameters for one-head, one-layer fact transformers of growing width, trained on 500
random facts (``toy_models.facts_reader.capacity``, the sweep of tutorial 07 at full size).

    python scripts/regenerate_facts_capacity.py            # 5 widths x 2 seeds, 1500 steps
    python scripts/regenerate_facts_capacity.py --out /tmp/cap.png --steps 300 --seeds 1

It prints one line per width (parameters, facts stored, bits per parameter) and writes the
figure."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from toy_models import facts_reader as fr

SIZES = [(2, 4), (4, 8), (8, 16), (16, 32), (32, 64)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/figures/facts_capacity.png")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--T", type=int, default=500)
    ns = ap.parse_args()
    t0 = time.perf_counter()
    rows = fr.capacity(SIZES, T=ns.T, steps=ns.steps, seeds=ns.seeds)
    for r in rows:
        n = len(r["facts_stored"])
        print(
            f"d_model={r['d_model']:>2}, d_mlp={r['d_mlp']:>2}: {r['params']:>5} parameters, "
            f"stores {sum(r['facts_stored']) / n:.0f} of {ns.T} random facts = "
            f"{sum(r['bits_per_param']) / n:.2f} bits per parameter (seeds: "
            + ", ".join(f"{b:.2f}" for b in r["bits_per_param"])
            + ")"
        )
    ax = fr.plot_capacity(rows, T=ns.T, n_objects=16)
    ax.figure.tight_layout()
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ax.figure.savefig(out, dpi=110)
    plt.close(ax.figure)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {out} and {out.with_suffix('.json')} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
