# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 03 · Double descent without label noise
#
# Henighan et al., *Superposition, Memorization, and Double Descent* (Anthropic, 2023), train a
# tied bottleneck (n sparse features squeezed into m = 2 hidden dimensions) on finite data sets
# of T points. With few points the model **memorises**: the hidden vectors of the training
# points form a regular T-gon and the features are ignored. With many points it
# **generalises**: it stores a few features (a pentagon for m = 2) and test loss approaches
# train loss. In between, test loss has a bump. Generalisation starts once each feature has been
# seen about 10 times, i.e. near T(1 − S) ≈ 10 (background §4).
#
# `memlens.sweep` trains a whole grid of (T, seed) cells as instances of one model, writes the
# table as it goes (resumable), and `memlens.sweeps.figures` draws the figures. The same run from
# the shell:
# `memlens sweep --model bottleneck --preset cpu --out runs/dd && memlens report runs/dd`.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import memlens as ml
from memlens import sweeps
from memlens.sweeps import figures, geometry

FAST = os.environ.get("MEMLENS_FAST") == "1"

if FAST:  # n = 60 features, S = 0.9: the transition should sit near T = 10 / (1 - S) = 100
    task = {"n_features": 60, "sparsity": 0.9, "d_hidden": 2, "n_test": 512}
    grid = {"T": [3, 6, 12, 25, 50, 100, 200, 400], "seed": [0, 1]}
    train = {"steps": 1500, "lr": 1e-2, "warmup": 75, "weight_decay": 1e-2}
else:  # the `cpu` preset: n = 1000, S = 0.99, transition near T = 1000
    p = ml.get_bundle("bottleneck").preset("cpu")
    task, grid, train = p["task"], p["grid"], p["train"]
FIGURES = Path("tutorial-output") / "03_double_descent"  # this tutorial's figures and sweeps
FIGURES.mkdir(parents=True, exist_ok=True)
OUT = FIGURES / ("sweep-fast" if FAST else "sweep-cpu")  # each mode its own sweep folder

# %% [markdown]
# ## Run the sweep
#
# Cells with the same shapes share one model; data sets of different sizes are padded and
# masked, grouped by T so that padding costs less than 1.5× the useful compute. Each cell records
# train and test loss, weight norms and the probes' scalars (mean D*, dictionary coverage).

# %%
rows = ml.sweep(
    "bottleneck",
    grid,
    task=task,
    train=train,
    out=OUT,
    progress=False,
    probes=("dimensionality", "dictionary"),
)
config, _ = sweeps.read_results(OUT)
print(
    f"{len(rows)} cells in {config['n_groups']} packed groups, "
    f"padding waste {config['padding_waste']:.2f}x"
)
print(f"{'T':>5s} {'train':>8s} {'test':>8s} {'coverage':>9s} {'mean D*':>8s} {'m/T':>7s}")
for T, tr, te, cov, dstar in zip(
    *[
        figures.by_T(rows, k)[1] if k != "T" else figures.by_T(rows, "test_loss")[0]
        for k in (
            "T",
            "train_loss",
            "test_loss",
            "dictionary.coverage",
            "dimensionality.mean_max_data_dim",
        )
    ],
    strict=True,
):
    print(f"{T:5.0f} {tr:8.4f} {te:8.4f} {cov:9.2f} {dstar:8.4f} {2 / T:7.4f}")

# %% [markdown]
# ## The double-descent curve
#
# The median over seeds in bold, each seed as a faint line (a min–max band would stretch the log
# axis down to the luckiest seed's train loss). The dashed line marks T(1 − S) = 10.
#
# What the runs print. Default mode (the `cpu` preset, 14 s on a quiet 2-core machine):
# test-loss peak at T = 348, 2.23x the small-T end and 2.56x the large-T end, below
# T(1 − S) = 10 (T = 1000), where test loss is back at train loss. Fast mode (`MEMLENS_FAST=1`,
# 11 s): peak at T = 50, 1.19x and 1.42x. The tests assert each mode's peak T and its ratios
# within 10% (the default run's in a slow test). If a run's highest median test loss
# sits at an end of the T range there is no bump to report, and the script says so instead.

# %%
fig = figures.double_descent(rows, config)
fig.savefig(FIGURES / "double_descent.png", dpi=110)
peak = figures.find_peak(rows)
if peak["interior"]:  # a bump: the median test loss is highest strictly inside the T range
    print(
        f"test-loss peak at T = {peak['T_peak']:.0f}: {peak['peak']:.3f}, "
        f"{peak['peak'] / peak['small_T']:.2f}x the small-T end ({peak['small_T']:.3f}) and "
        f"{peak['peak'] / peak['large_T']:.2f}x the large-T end ({peak['large_T']:.3f})"
    )
else:  # the highest median test loss is at an end of the range: no double descent to report
    print(
        f"no interior test-loss peak: the median test loss is highest at T = "
        f"{peak['T_peak']:.0f}, an end of the T range"
    )

# %% [markdown]
# ## Geometry on both sides of the bump
#
# Top row: the hidden vectors h = W x of the training points. At small T they form a T-gon
# (each point gets its own direction: memorisation). Bottom row: the feature directions W_i. At
# large T a few features stand out and spread evenly (a pentagon for m = 2), and the training
# points no longer have directions of their own.

# %%
Ts = sorted({r["T"] for r in rows})
fig = geometry.geometry(OUT, rows, [Ts[0], Ts[-1]])
fig.savefig(FIGURES / "geometry.png", dpi=110)
print("wrote", FIGURES / "double_descent.png", "and", FIGURES / "geometry.png")
