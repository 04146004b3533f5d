"""``memlens quickstart``: the whole story on embedded defaults, in a few minutes on a laptop CPU.

1. Train each of the three toy models at a small T (memorising) and a large T (generalising),
   and print train and test loss.
2. Take the MLP block in both regimes: read the memorised dictionary off the weights and print
   its first entries; show that the generalising model has no lookup table.
3. Measure maximal data dimensionality D* and name the most memorised points.
4. Temper the memorising model across a ladder of temperatures with batched SGLD, and print the
   LLC and which circuits were noised out at each temperature.
5. Write a report folder: figures, ``summary.md`` linking them, and the run's configs.

The core finds models and probes through the registry, like any plugin.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from memlens.io import atomic_write_text, write_json
from memlens.registry import get_probe
from memlens.training import sparse_activations, train

QUICKSTART_PRESET = "quickstart"  # each model's two-regime settings (small T, large T)
STORY_PRESET = "story"  # the model whose dictionary, D* and tempering the quickstart follows


def _bundles_with(preset: str) -> list:
    """Registered bundles that define ``preset``, in name order."""
    from memlens.registry import MODELS, get_bundle

    return [get_bundle(n) for n in MODELS.names() if preset in get_bundle(n).presets]


@dataclasses.dataclass(frozen=True)
class StoryConfig:
    """The MLP-block story's settings (units: points, neurons, optimizer steps)."""

    n_features: int = 64
    sparsity: float = 0.9
    d_model: int = 8
    d_mlp: int = 32
    T_memorise: int = 16  # <= d_mlp: one neuron per point is possible
    T_generalise: int = 2048
    steps: int = 2000
    lr: float = 1e-2
    weight_decay: float = 1e-2
    l1: float = 0.1  # L1 penalty on hook_post activations (both regimes), see below
    batch_size: int = 512  # used only when T > batch_size
    temperatures: tuple = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
    chains: int = 4
    draws: int = 200
    step_size: str | float = "auto"  # SGLD ε: "auto" chooses it per temperature (see temper)
    # γ: with T = 16 points nβ = n/log n ≈ 5.8, so at γ = 1 most weight directions are held only
    # by γ and cold chains would need ~1/(εγ) ≈ 10⁴-10⁵ steps to mix; γ = 100 (common in LLC
    # practice) makes every rung mixable within the sampler's budget
    localization: float = 100.0
    max_steps: int = 3_000  # "auto"'s budget: SGLD steps per chain in one sampler run


def loss_table(seed: int, progress: bool, bar: tqdm) -> list[dict]:
    """Each model with a quickstart preset, trained at its small T and its large T."""
    rows = []
    for bundle in _bundles_with(QUICKSTART_PRESET):
        p = bundle.preset(QUICKSTART_PRESET)
        for T, regime in zip(p["grid"]["T"], ("memorising", "generalising"), strict=True):
            spec = {**p["task"], "T": T, "seed": seed}
            tr, te = bundle.data(spec)
            model = bundle.build(spec)
            kw = dict(p["train"])
            kw["batch_size"] = kw["batch_size"] if T > kw["batch_size"] else None
            res = train(model, tr, test=te, seed=seed, progress=False, **kw)
            rows.append(
                {
                    "model": bundle.name,
                    "T": T,
                    "regime": regime,
                    "train_loss": float(res.train_loss[0]),
                    "test_loss": float(res.test_loss[0]),
                }
            )
            bar.update(1)
    return rows


def run(
    out: str | Path = "memlens-quickstart",
    seed: int = 0,
    progress: bool = True,
    cfg: StoryConfig | None = None,
) -> dict:
    """Run the quickstart and write the report folder ``out``; returns the numbers it printed."""
    cfg = cfg or StoryConfig()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    bar = tqdm(total=6 + 4, desc="quickstart", disable=not progress, leave=False)

    # 1. the three settings, both regimes
    rows = loss_table(seed, progress, bar)
    bar.clear()
    print("\n== 1. Three toy settings, small T (memorising) vs large T (generalising) ==")
    print(f"{'model':11s} {'T':>6s} {'regime':13s} {'train loss':>11s} {'test loss':>11s}")
    for r in rows:
        print(
            f"{r['model']:11s} {r['T']:6d} {r['regime']:13s} {r['train_loss']:11.4g} "
            f"{r['test_loss']:11.4g}"
        )

    # 2. the story model twice
    bundle = _bundles_with(STORY_PRESET)[0]
    base = {
        "n_features": cfg.n_features,
        "sparsity": cfg.sparsity,
        "d_model": cfg.d_model,
        "d_mlp": cfg.d_mlp,
        "seed": seed,
        "embed_seed": seed,
    }
    models, data, runs = {}, {}, {}
    for regime, T in (("memorising", cfg.T_memorise), ("generalising", cfg.T_generalise)):
        tr, te = bundle.data({**base, "T": T})
        model = bundle.build({**base, "T": T})
        # Plain AdamW memorises with a distributed code (each neuron fires on about half the
        # points): no neuron-level lookup table. An L1 penalty on the activations, as in sparse
        # dictionary learning, makes each neuron store one or two points.
        with sparse_activations(model, cfg.l1):
            runs[regime] = train(
                model,
                tr,
                test=te,
                steps=cfg.steps,
                lr=cfg.lr,
                weight_decay=cfg.weight_decay,
                warmup=cfg.steps // 20,
                seed=seed,
                batch_size=cfg.batch_size if T > cfg.batch_size else None,
                progress=False,
            )
        models[regime], data[regime] = model, tr
        bar.update(1)
    dics = {r: get_probe("dictionary")(train=data[r]).run(models[r], data[r]) for r in models}
    bar.update(1)
    bar.clear()
    print(
        f"\n== 2. MLP block (d_model={cfg.d_model}, d_mlp={cfg.d_mlp}, "
        f"n_features={cfg.n_features}): the memorised dictionary =="
    )
    for r in models:
        print(
            f"{r:12s} T={len(data[r]):5d}: train loss {float(runs[r].train_loss[0]):.3g}, "
            f"test loss {float(runs[r].test_loss[0]):.3g}, dictionary coverage "
            f"{dics[r].coverage:.0%}, read-back {dics[r].read_back_accuracy:.0%}"
        )
    print("\nFirst entries of the memorising model's dictionary (read from the weights):")
    print(dics["memorising"].to_table(max_rows=8))
    print(f"\nThe generalising model: {dics['generalising'].summary().splitlines()[-1].strip()}")

    # 3. D*
    dims = {
        r: get_probe("dimensionality")(hook="hook_post", train=data[r]).run(models[r], data[r])
        for r in models
    }
    bar.update(1)
    bar.clear()
    print("\n== 3. Maximal data dimensionality D* at hook_post ==")
    for r in models:
        dstar = dims[r].max_data_dim[0]
        top = torch.argsort(dstar, descending=True)[:5].tolist()
        print(
            f"{r:12s}: mean D* {float(dstar.mean()):.3g} (Σ D* = rank = "
            f"{float(dstar.sum()):.3g} of {len(dstar)} points); most memorised points "
            f"{top} with D* {[round(float(dstar[j]), 3) for j in top]}"
        )

    # 4. temper the memorising model (step size "auto": a step where λ̂ no longer moves with ε)
    import warnings

    from memlens.sampling import temper

    with warnings.catch_warnings(record=True) as caught:  # reported below, in words
        warnings.simplefilter("always")
        tempering = temper(
            models["memorising"],
            data["memorising"],
            cfg.temperatures,
            chains=cfg.chains,
            draws=cfg.draws,
            step_size=cfg.step_size,
            localization=cfg.localization,
            max_steps=cfg.max_steps,
            seed=seed,
            probes=["survival"],
            progress=False,
        )
    bar.update(1)
    surv = tempering.probe("survival")
    bar.clear()
    print(
        f"\n== 4. Tempering the memorising model ({len(cfg.temperatures)} temperatures x "
        f"{cfg.chains} chains x {cfg.draws} draws, batched) =="
    )
    print(tempering.summary())
    bad = [
        f"t={t:.3g}: {tempering.health.describe(a, 0)}"
        for a, t in enumerate(cfg.temperatures)
        if not bool(tempering.health.ok[a, 0])
    ]
    if bad:
        print(
            f"Sampler health: {len(bad)} of {len(cfg.temperatures)} temperature(s) unhealthy "
            "(hatched in the survival figure, left out of the LLC fit and of characteristic "
            "temperatures):\n  " + "\n  ".join(bad)
        )
    else:
        print(f"Sampler health: all {len(cfg.temperatures)} temperatures healthy.")
    for w in caught:
        print(f"sampler warning: {w.message}")
    print(surv.summary())

    # 5. the report
    figs = {
        "dictionary.png": dics["memorising"].plot(),
        "max_data_dim.png": dims["memorising"].compare(
            [dims["memorising"], dims["generalising"]], ["memorising", "generalising"]
        ),
        "survival.png": surv.plot(),
        "llc.png": tempering.spectrum().plot(),
        "training.png": runs["memorising"].plot(),
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in figs.items():
        fig.savefig(out / name, dpi=110, bbox_inches="tight")
    bar.update(1)
    numbers = {
        "seed": seed,
        "loss_table": rows,
        "story": {
            r: {
                "T": len(data[r]),
                "train_loss": float(runs[r].train_loss[0]),
                "test_loss": float(runs[r].test_loss[0]),
                "coverage": dics[r].coverage,
                "read_back": dics[r].read_back_accuracy,
                "mean_max_data_dim": float(dims[r].max_data_dim.mean()),
            }
            for r in models
        },
        "llc": {
            "temperatures": list(cfg.temperatures),
            "mean": tempering.llc.mean[:, 0].tolist(),
            "std": tempering.llc.std[:, 0].tolist(),
        },
    }
    write_json(
        out / "config.json",
        {
            "story": dataclasses.asdict(cfg),
            "loss_table": {
                b.name: b.preset(QUICKSTART_PRESET) for b in _bundles_with(QUICKSTART_PRESET)
            },
            "seed": seed,
        },
    )
    write_json(out / "results.json", numbers)
    write_json(out / "dictionary.json", dics["memorising"].to_dict())
    for r, m in models.items():
        m.save(out / f"mlp-{r}.pt")
    atomic_write_text(out / "summary.md", _summary_md(cfg, numbers, dics, surv, tempering))
    bar.close()
    print(f"\n== 5. Report written to {out.resolve()} ({time.perf_counter() - t0:.0f} s) ==")
    print(f"   open {out / 'summary.md'}")
    return numbers


def _summary_md(cfg, numbers, dics, surv, tempering) -> str:
    mem, gen = numbers["story"]["memorising"], numbers["story"]["generalising"]
    lines = [
        "# memlens quickstart report",
        "",
        f"Seed {numbers['seed']}. Configs: [config.json](config.json); numbers: "
        "[results.json](results.json); checkpoints: `mlp-memorising.pt`, `mlp-generalising.pt` "
        "(load with `memlens.load`).",
        "",
        "## Three settings, two regimes",
        "",
        "| model | T | regime | train loss | test loss |",
        "|---|---|---|---|---|",
        *[
            f"| {r['model']} | {r['T']} | {r['regime']} | {r['train_loss']:.4g} | "
            f"{r['test_loss']:.4g} |"
            for r in numbers["loss_table"]
        ],
        "",
        f"## MLP block: the dictionary (d_mlp = {cfg.d_mlp})",
        "",
        f"- memorising, T = {mem['T']}: train loss {mem['train_loss']:.3g}, test loss "
        f"{mem['test_loss']:.3g}, coverage {mem['coverage']:.0%}, read-back {mem['read_back']:.0%}",
        f"- generalising, T = {gen['T']}: train loss {gen['train_loss']:.3g}, test loss "
        f"{gen['test_loss']:.3g}, coverage {gen['coverage']:.0%}, read-back {gen['read_back']:.0%}",
        "",
        "![dictionary](dictionary.png)",
        "",
        "```",
        dics["memorising"].to_table(max_rows=12),
        "```",
        "",
        "## Maximal data dimensionality D* (hook_post, memorising vs generalising model)",
        "",
        f"Mean D* {mem['mean_max_data_dim']:.3g} (memorising) vs {gen['mean_max_data_dim']:.3g} "
        "(generalising).",
        "",
        "![D*](max_data_dim.png)",
        "",
        "## Tempering: LLC and circuit survival",
        "",
        "```",
        tempering.summary(),
        "",
        surv.summary(),
        "```",
        "",
        "![survival](survival.png)",
        "",
        "![LLC against temperature](llc.png)",
        "",
        "![training loss](training.png)",
        "",
    ]
    return "\n".join(lines)
