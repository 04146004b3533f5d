"""``memlens quickstart``: the main job, on embedded defaults, in a few minutes on a laptop CPU.

For now it trains each of the three toy models at a small T (memorising) and a large T
(generalising), and prints train and test loss per model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from memlens import data as D
from memlens.io import write_json
from memlens.registry import get_model
from memlens.train import train

# (model name, task factory, model kwargs beyond the task's, small T, large T, steps, lr)
SETTINGS = {
    "bottleneck": dict(n_features=100, sparsity=0.95, d_extra={"d_hidden": 4},
                       T=(10, 2000), steps=2000),
    "mlp": dict(n_features=40, sparsity=0.9, d_model=10, d_extra={"d_mlp": 64},
                T=(16, 2000), steps=2000),
    "unembed": dict(n_features=40, sparsity=0.9, d_model=10, d_extra={},
                    T=(16, 2000), steps=2000),
}


def make_task(name: str, s: dict, n_instances: int, seed: int) -> D.Task:
    feats = D.SparseFeatures(s["n_features"], s["sparsity"], normalize=True)
    if name == "bottleneck":
        return D.BottleneckTask(feats, n_instances)
    if name == "mlp":
        return D.MLPTask(feats, s["d_model"], n_instances, seed=seed)
    return D.UnembedTask(feats, s["d_model"], n_instances, seed=seed, labels="rule")


def run(out: str | Path = "memlens-quickstart", seed: int = 0, progress: bool = True) -> dict:
    out = Path(out)
    t0 = time.perf_counter()
    rows = []
    print(f"{'model':11s} {'T':>6s} {'regime':13s} {'train loss':>11s} {'test loss':>11s}")
    for name, s in SETTINGS.items():
        cls = get_model(name)
        for T, regime in zip(s["T"], ("memorising", "generalising")):
            task = make_task(name, s, 1, seed)
            tr, te = task.split(T, seed=seed)
            model = cls(**task.model_kwargs(), **s["d_extra"], seed=seed)
            res = train(model, tr, test=te, steps=s["steps"], lr=3e-3, weight_decay=1e-2,
                        warmup=s["steps"] // 20, seed=seed, progress=progress,
                        desc=f"{name} T={T}")
            row = {"model": name, "T": T, "regime": regime,
                   "train_loss": float(res.train_loss[0]), "test_loss": float(res.test_loss[0])}
            rows.append(row)
            print(f"{name:11s} {T:6d} {regime:13s} {row['train_loss']:11.4g} "
                  f"{row['test_loss']:11.4g}")
    write_json(out / "losses.json", {"seed": seed, "settings": SETTINGS, "rows": rows})
    print(f"\nwrote {out / 'losses.json'} ({time.perf_counter() - t0:.0f} s)")
    return {"rows": rows}


if __name__ == "__main__":
    print(json.dumps(run()["rows"], indent=1))
