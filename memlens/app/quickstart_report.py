"""The quickstart's rules and report: what "memorising" and "generalising" must mean (checked
and printed), ``summary.md``, the README's quickstart block (rendered from a run's
``results.json``, see ``scripts/update_readme.py``) and the training figure."""

from __future__ import annotations

__all__ = [
    "verdict",
    "table_caveats",
    "summary_md",
    "readme_section",
    "survival_numbers",
    "training_figure",
]

# What "memorising" and "generalising" must mean in the loss table (checked, and printed):
MEMORISE_MAX = 0.10  # memorising: train loss at most 10% of the trivial baseline's ...
MEMORISE_GAP = 3.0  # ... and test loss at least 3x the train loss
GENERALISE_GAP = 0.10  # generalising: test loss at most 10% above the train loss ...
GENERALISE_MAX = 0.95  # ... and below 95% of the trivial baseline on the test set
WEAK = 0.80  # a generalising model whose test loss is above 80% of the baseline learned little


def verdict(regime: str, train: float, test: float, base_train: float, base_test: float):
    """``(holds, words)``: whether a model shows the regime it was trained for, and why."""
    if regime == "memorising":
        ok = train <= MEMORISE_MAX * base_train and test >= MEMORISE_GAP * train
        ratio = test / max(train, 1e-30)
        why = f"train {train / base_train:.1%} of baseline, test/train {ratio:.3g}x"
    else:
        ok = test <= (1 + GENERALISE_GAP) * train and test <= GENERALISE_MAX * base_test
        why = f"test/train {test / max(train, 1e-30):.3g}x, test {test / base_test:.0%} of baseline"
    return ok, ("yes" if ok else "NO") + f" ({why})"


def table_caveats(rows: list[dict]) -> list[str]:
    """What the loss table does not show, in words (printed and written to summary.md)."""
    out = []
    for r in rows:
        if not r["holds"]:
            out.append(
                f"the {r['regime']} {r['title']} (T = {r['T']}) does not show its regime: "
                f"{r['verdict']}"
            )
        elif r["regime"] == "generalising" and r["test_loss"] > WEAK * r["baseline_test"]:
            out.append(
                f"the generalising {r['title']} (T = {r['T']}) generalises (test ≈ train) but "
                f"learns little: its test loss is {r['test_loss'] / r['baseline_test']:.0%} of the "
                "trivial baseline (it stores few of its features)"
            )
    return out


def survival_numbers(surv) -> dict:
    """Per family, how many active circuits were noised out at each temperature (in the order of
    ``temperatures``), and which temperatures were healthy."""
    fams = list(dict.fromkeys(surv.families))
    dead = {
        f: [
            int((surv.noised_out[a, 0] & surv.family_mask(f) & surv.active[0]).sum())
            for a in range(len(surv.temperatures))
        ]  # fmt: skip
        for f in fams
    }
    return {
        "temperatures": surv.temperatures.tolist(),
        "active": {f: int((surv.family_mask(f) & surv.active[0]).sum()) for f in fams},
        "noised_out": dead,
        "healthy": surv.healthy[:, 0].tolist(),
    }


def training_figure(runs: dict, bundle):
    """Training loss of both regimes, with each run's final test loss marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for (regime, res), color in zip(runs.items(), ("C3", "C0"), strict=False):
        h = res.history[:, 0].numpy()
        ax.plot(h, lw=0.9, color=color, label=f"{regime}: training loss")
        ax.plot([len(h) - 1], [float(res.test_loss[0])], "o", ms=7, mfc="none", color=color,
                label=f"{regime}: test loss at the end")  # fmt: skip
    ax.set(xlabel="optimizer step", ylabel=bundle.loss_units, yscale="log",
           title=f"{bundle.title}: training (lines) and final test loss (circles)")  # fmt: skip
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def _table_md(rows: list[dict]) -> list[str]:
    units = dict.fromkeys(f"{r['model']}: {r['units']}" for r in rows)
    return [
        "| model | T | regime | train loss | test loss | trivial baseline (test) | shows its "
        "regime? |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {r['model']} | {r['T']} | {r['regime']} | {r['train_loss']:.3g} | "
            f"{r['test_loss']:.3g} | {r['baseline_test']:.3g} | {r['verdict']} |"
            for r in rows
        ],
        "",
        "Losses per point; " + "; ".join(units) + ". The trivial baseline is the best constant "
        f"prediction. Memorising: train loss ≤ {MEMORISE_MAX:.0%} of the baseline and test ≥ "
        f"{MEMORISE_GAP:g}× train; generalising: test ≤ {1 + GENERALISE_GAP:g}× train and ≤ "
        f"{GENERALISE_MAX:.0%} of the baseline.",
    ]


def summary_md(bundle, numbers, dics, surv, tempering) -> str:
    mem, gen = numbers["story"]["memorising"], numbers["story"]["generalising"]
    lines = [
        "# memlens quickstart report",
        "",
        f"Seed {numbers['seed']}. Configs: [config.json](config.json); numbers: "
        f"[results.json](results.json); checkpoints: `{bundle.name}-memorising.pt`, "
        f"`{bundle.name}-generalising.pt` (with their data recipes: `memlens probe` and "
        "`memlens temper` read them; in Python `memlens.load_with_recipes`).",
        "",
        "## Three settings, two regimes",
        "",
        *_table_md(numbers["loss_table"]),
        "",
        f"## {bundle.title}: the dictionary",
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
        "## Which points are memorised? (planted random labels, generalising final layer)",
        "",
        memorised_sentence(numbers["memorised"]),
        "",
        "| detector | AUROC | precision@k |",
        "|---|---|---|",
        *[
            f"| {d} | {a:.2f} | {numbers['memorised']['precision_at_k'][d]:.2f} |"
            for d, a in sorted(numbers["memorised"]["auroc"].items(), key=lambda kv: -kv[1])
        ],
        "",
        "![ROC curves of every detector against the planted points](memorised_roc.png)",
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
        "![training and test loss](training.png)",
        "",
        "## Caveats",
        "",
        *([f"- {c}" for c in numbers["caveats"]] or ["none"]),
        "",
    ]
    return "\n".join(lines)


def _survival_sentence(sv: dict) -> str:
    """Which circuits were noised out where, from results.json's survival numbers."""
    healthy = [a for a, ok in enumerate(sv["healthy"]) if ok]
    if not healthy:
        return "no temperature was healthy, so no circuit's fate is read"
    t = [f"{x:g}" for x in sv["temperatures"]]
    lo, hi = healthy[0], healthy[-1]
    parts = []
    for fam, n_active in sv["active"].items():
        dead = sv["noised_out"][fam]
        s = f"of {n_active} active {fam} circuits, {dead[lo]} are noised out at the coldest "
        s += f"healthy t = {t[lo]} and {dead[hi]} at the hottest, t = {t[hi]}"
        parts.append(s)
    n_bad = len(t) - len(healthy)
    tail = f" ({n_bad} of {len(t)} temperatures unhealthy and left out)" if n_bad else ""
    return "; ".join(parts) + tail


def memorised_sentence(m: dict) -> str:
    """Step 3 in words: did the model fit the planted points, and which detector found them."""
    return (
        f"Of the {m['T']} points of a generalising {m['model']} model (train loss "
        f"{m['rule_loss']:.3g} on its rule points, test {m['test_loss']:.3g}), {m['planted']} "
        f"carry a random label; it fitted {m['fitted']:.0%} of them (train loss "
        f"{m['planted_loss']:.3g} vs {m['control_loss']:.3g} on fresh points with random "
        f"labels), and the best detector, {m['best']}, ranks them {m['best_ranks']} (AUROC "
        f"{m['best_auroc']:.2f}); D* at `{m['hook']}` ranks them {m['dstar_ranks']} (AUROC "
        f"{m['auroc']['dstar']:.2f})."
    )


def readme_section(numbers: dict) -> str:
    """The README's quickstart results, rendered from a run's ``results.json`` (``python
    scripts/update_readme.py`` writes it into README.md; a test checks the two agree)."""
    mem, gen = numbers["story"]["memorising"], numbers["story"]["generalising"]
    llc = numbers["llc"]
    lines = [
        f"Its numbers (seed {numbers['seed']}; `memlens-quickstart/results.json`):",
        "",
        *_table_md(numbers["loss_table"]),
        "",
        f"The story model ({mem['model']}): memorising on T = {mem['T']} points (train loss "
        f"{mem['train_loss']:.2g}, test {mem['test_loss']:.3g}), its dictionary read off the "
        f"weights covers {mem['coverage']:.0%} of the points with read-back "
        f"{mem['read_back']:.0%}; generalising on T = {gen['T']} (train "
        f"{gen['train_loss']:.3g}, test {gen['test_loss']:.3g}) "
        f"it has coverage {gen['coverage']:.0%}. " + memorised_sentence(numbers["memorised"]),
        "",
        "Tempering the memorising model, λ̂ by temperature (± standard error; * unhealthy): "
        + ", ".join(
            f"t = {t:g}: {m:.3g} ± {e:.2g}" + ("" if ok else "*")
            for t, m, e, ok in zip(
                llc["temperatures"], llc["mean"], llc["se"], llc["healthy"], strict=True
            )  # fmt: skip
        )
        + ". Circuit survival: "
        + _survival_sentence(numbers["survival"])
        + ".",
        "",
        "Caveats, as the run prints them:",
        "",
        *([f"- {c}" for c in numbers["caveats"]] or ["- none"]),
    ]
    return "\n".join(lines)
