"""``memlens quickstart``: the whole story on embedded defaults, in a few minutes on a laptop CPU.

1. Train each of the three toy models at a small T (memorising) and a large T (generalising),
   and print train and test loss.
2. Take the MLP block in both regimes: read the memorised dictionary off the weights and print
   its first entries; show that the generalising model has no lookup table.
3. Plant points with private features in the generalising model's training set and ask which
   points it memorised: every detector's AUROC against the planted points, and their ranks.
4. Temper the memorising model across a ladder of temperatures with batched SGLD, and print the
   LLC and which circuits were noised out at each temperature.
5. Write a report folder: figures, ``summary.md`` linking them, and the run's configs.

The core finds models and probes through the registry, like any plugin.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from memlens.app.quickstart_memorised import memorised_step
from memlens.app.quickstart_report import (
    summary_md,
    survival_numbers,
    table_caveats,
    training_figure,
    verdict,
)
from memlens.bundle import bundles_with
from memlens.io import atomic_write_text, write_json
from memlens.persistence import save
from memlens.registry import get_probe
from memlens.training import train
from memlens.validate import check_output_dir

QUICKSTART_PRESET = "quickstart"  # each model's two-regime settings (small T, large T)
STORY_PRESET = "story"  # the model whose dictionary, memorised points and tempering it follows


@dataclasses.dataclass(frozen=True)
class StoryConfig:
    """The sampler settings of the quickstart's tempering (step 4). The story model's task and
    training come from its bundle's ``story`` preset (``memlens list`` shows presets)."""

    temperatures: tuple = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)  # t, unitless
    chains: int = 4
    draws: int = 200  # kept draws per chain, burn-in included
    step_size: str | float = "auto"  # SGLD ε: "auto" chooses it per temperature (see temper)
    # γ: with T = 16 points nβ = n/log n ≈ 5.8, so at γ = 1 most weight directions are held only
    # by γ and cold chains would need ~1/(εγ) ≈ 10⁴-10⁵ steps to mix; γ = 100 (common in LLC
    # practice) makes every rung mixable within the sampler's budget
    localization: float = 100.0
    max_steps: int = 3_000  # "auto"'s budget: SGLD steps per chain in one sampler run


def _fit(bundle, spec: dict, train_kw: dict, seed: int):
    """Build, generate and train one model of ``spec``; ``(model, train set, test set, result)``."""
    tr, te = bundle.data(spec)
    model = bundle.build(spec)
    kw = dict(train_kw)
    bs = kw.get("batch_size")
    kw["batch_size"] = bs if bs is not None and len(tr) > bs else None
    res = train(model, tr, test=te, seed=seed, progress=False, **kw)
    return model, tr, te, res


def loss_table(seed: int, progress: bool, bar: tqdm) -> list[dict]:
    """Each model with a quickstart preset, trained at its small T and its large T, with its
    loss units, the trivial baseline (best constant prediction) and whether it shows its regime."""
    rows = []
    for bundle in bundles_with(QUICKSTART_PRESET):
        p = bundle.preset(QUICKSTART_PRESET)
        for T, regime in zip(p["grid"]["T"], ("memorising", "generalising"), strict=True):
            _, tr, te, res = _fit(bundle, {**p["task"], "T": T, "seed": seed}, p["train"], seed)
            row = {
                "model": bundle.name,
                "title": bundle.title,
                "units": bundle.loss_units,
                "T": T,
                "regime": regime,
                "train_loss": float(res.train_loss[0]),
                "test_loss": float(res.test_loss[0]),
                "baseline_train": float(bundle.baseline(tr)[0]),
                "baseline_test": float(bundle.baseline(te)[0]),
            }
            row["holds"], row["verdict"] = verdict(
                regime, row["train_loss"], row["test_loss"], row["baseline_train"],
                row["baseline_test"],
            )  # fmt: skip
            rows.append(row)
            bar.update(1)
    return rows


def _print_table(rows: list[dict]) -> None:
    head = f"{'model':11s} {'T':>6s} {'regime':13s} {'train':>9s} {'test':>9s} {'baseline':>9s}"
    print(head + "  shows its regime?")
    for r in rows:
        print(
            f"{r['model']:11s} {r['T']:6d} {r['regime']:13s} {r['train_loss']:9.3g} "
            f"{r['test_loss']:9.3g} {r['baseline_test']:9.3g}  {r['verdict']}"
        )
    units = dict.fromkeys(f"{r['model']}: {r['units']}" for r in rows)
    print("losses per point; " + "; ".join(units))
    print(
        "baseline: the best constant prediction on the test set "
        "(train-set baselines in results.json)"
    )


def _story_bundle():
    """The bundle whose ``story`` preset the quickstart follows, or a clear error."""
    return bundles_with(STORY_PRESET, needed_by="the quickstart")[0]


def _story(bundle, seed: int, bar) -> tuple[dict, dict, dict, dict, dict, dict, Any, list]:
    """Step 2: the story model in both regimes (the generalising one with planted memories),
    their dictionaries, and the plain-AdamW caveat. Returns (story preset, models, data, runs,
    specs, dictionaries, plain-AdamW dictionary or None, caveats)."""
    story = bundle.preset(STORY_PRESET)
    models, data, runs, specs = {}, {}, {}, {}
    for regime, T in zip(("memorising", "generalising"), story["grid"]["T"], strict=True):
        specs[regime] = {**story["task"], "T": T, "seed": seed}
        models[regime], data[regime], _, runs[regime] = _fit(
            bundle, specs[regime], story["train"], seed
        )
        bar.update(1)
    dics = {r: get_probe("dictionary")(train=data[r]).run(models[r], data[r]) for r in models}
    l1 = story["train"].get("l1", 0.0)
    plain, caveats = None, []
    if l1:
        m0, tr0, _, r0 = _fit(bundle, specs["memorising"], {**story["train"], "l1": 0.0}, seed)
        plain = get_probe("dictionary")(train=tr0).run(m0, tr0)
        caveats.append(
            f"without its L1 penalty on the activations (l1 = {l1}) the memorising "
            f"{bundle.title} still memorises (train loss {float(r0.train_loss[0]):.2g}) but with a "
            f"mostly distributed code: dictionary coverage {plain.coverage:.0%} (with the "
            f"penalty: {dics['memorising'].coverage:.0%}). The quickstart trains both regimes "
            "with the penalty, as sparse dictionary learning does.",
        )
    bar.update(1)
    bar.clear()
    return story, models, data, runs, specs, dics, plain, caveats


def _print_story(bundle, story, models, data, runs, dics) -> None:
    shape = ", ".join(f"{k}={v}" for k, v in story["task"].items())
    print(f"\n== 2. {bundle.title} ({shape}): the memorised dictionary ==")
    for r in models:
        print(
            f"{r:12s} T={len(data[r]):5d}: train loss {float(runs[r].train_loss[0]):.3g}, "
            f"test loss {float(runs[r].test_loss[0]):.3g}, dictionary coverage "
            f"{dics[r].coverage:.0%}, read-back {dics[r].read_back_accuracy:.0%}"
        )
    print("\nFirst entries of the memorising model's dictionary (read from the weights):")
    print(dics["memorising"].to_table(max_rows=8))
    print(f"\nThe generalising model: {dics['generalising'].summary().splitlines()[-1].strip()}")


def _temper_step(cfg: StoryConfig, model, data, seed: int):
    """Step 4: temper the memorising model (step size "auto"); prints what it shows."""
    import warnings

    from memlens.sampling import temper

    with warnings.catch_warnings(record=True) as caught:  # reported below, in words
        warnings.simplefilter("always")
        tempering = temper(
            model, data, cfg.temperatures, chains=cfg.chains, draws=cfg.draws,
            step_size=cfg.step_size, localization=cfg.localization, max_steps=cfg.max_steps,
            seed=seed, probes=["survival"], progress=False,
        )  # fmt: skip
    surv = tempering.probe("survival")
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
    return tempering, surv


def _save_figures(out: Path, figs: dict) -> None:
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    for name, fig in figs.items():
        fig = getattr(fig, "figure", fig)
        fig.savefig(out / name, dpi=110, bbox_inches="tight")
        plt.close(fig)


def _numbers(seed, rows, bundle, models, data, runs, dics, plain, step3, cfg, tempering, surv,
             caveats) -> dict:  # fmt: skip
    """What the quickstart printed, as ``results.json`` holds it."""
    return {
        "seed": seed,
        "loss_table": rows,
        "story": {
            r: {
                "model": bundle.name,
                "T": len(data[r]),
                "train_loss": float(runs[r].train_loss[0]),
                "test_loss": float(runs[r].test_loss[0]),
                "coverage": dics[r].coverage,
                "read_back": dics[r].read_back_accuracy,
            }
            for r in models
        },
        "plain_coverage": None if plain is None else plain.coverage,
        "memorised": step3["numbers"],
        "llc": {
            "temperatures": list(cfg.temperatures),
            "mean": tempering.llc.mean[:, 0].tolist(),
            "se": tempering.llc.se[:, 0].tolist(),
            "healthy": tempering.health.ok[:, 0].tolist(),
        },
        "survival": survival_numbers(surv),
        "caveats": caveats,
    }


def _write_files(out, cfg, bundle, story, seed, numbers, dics, models, specs) -> None:
    write_json(
        out / "config.json",
        {
            "sampler": dataclasses.asdict(cfg),
            "story": {bundle.name: story},
            "loss_table": {
                b.name: b.preset(QUICKSTART_PRESET) for b in bundles_with(QUICKSTART_PRESET)
            },
            "seed": seed,
        },
    )
    write_json(out / "results.json", numbers)
    write_json(out / "dictionary.json", dics["memorising"].to_dict())
    for r, m in models.items():  # with their data recipes: `memlens probe/temper` read them
        save(m, out / f"{bundle.name}-{r}.pt", recipes=[specs[r]])


def run(
    out: str | Path = "memlens-quickstart",
    seed: int = 0,
    progress: bool = True,
    cfg: StoryConfig | None = None,
) -> dict:
    """Run the quickstart and write the report folder ``out``; returns the numbers it printed."""
    cfg = cfg or StoryConfig()
    out = check_output_dir("--out", out)  # before any work
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    bundle = _story_bundle()  # before any work, too
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    bar = tqdm(total=6 + 5, desc="quickstart", disable=not progress, leave=False)

    # 1. the three settings, both regimes
    rows = loss_table(seed, progress, bar)
    caveats = table_caveats(rows)
    bar.clear()
    print("\n== 1. Three toy settings, small T (memorising) vs large T (generalising) ==")
    _print_table(rows)

    # 2. the story model twice, and once more without its L1 penalty (the first caveat)
    story, models, data, runs, specs, dics, plain, first = _story(bundle, seed, bar)
    caveats = first + caveats
    _print_story(bundle, story, models, data, runs, dics)

    # 3. which points are memorised? (a final layer with planted random labels: the ground truth)
    step3 = memorised_step(seed)
    bar.update(1)
    bar.clear()

    # 4. temper the memorising model (step size "auto": a step where λ̂ no longer moves with ε)
    tempering, surv = _temper_step(cfg, models["memorising"], data["memorising"], seed)
    bar.update(1)
    bar.clear()

    # 5. the report
    if not bool(tempering.health.ok[:, 0].all()):
        caveats.append(
            f"{int((~tempering.health.ok[:, 0]).sum())} of {len(cfg.temperatures)} tempering "
            "temperature(s) are unhealthy (listed above): they are hatched in survival.png, "
            "marked in llc.png and left out of characteristic temperatures"
        )
    print("\nCaveats:" if caveats else "\nCaveats: none.")
    for c in caveats:
        print(f"  - {c}")
    _save_figures(out, {
        "dictionary.png": dics["memorising"].plot(),
        "memorised_roc.png": step3["result"].plot(),
        "survival.png": surv.plot(),
        "llc.png": tempering.spectrum().plot(),
        "training.png": training_figure(runs, bundle),
    })  # fmt: skip
    bar.update(1)
    numbers = _numbers(seed, rows, bundle, models, data, runs, dics, plain, step3, cfg,
                       tempering, surv, caveats)  # fmt: skip
    _write_files(out, cfg, bundle, story, seed, numbers, dics, models, specs)
    atomic_write_text(out / "summary.md", summary_md(bundle, numbers, dics, surv, tempering))
    bar.close()
    print(f"\n== 5. Report written to {out.resolve()} ({time.perf_counter() - t0:.0f} s) ==")
    print(f"   open {out / 'summary.md'}; probe or temper a checkpoint with e.g.")
    print(f"   memlens temper {out / (bundle.name + '-memorising.pt')} --temperatures 0.1,1,10")
    return numbers
