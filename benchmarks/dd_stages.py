"""The double-descent search as it ran (``benchmarks/dd_search.py --stage NAME``), coarse to fine.

Each stage maps a setting to a list of blocks ``(base, changes, grid)``: one configuration per
change, each applied on top of ``base`` and of the setting's search base (the cpu preset as it was
before the search, ``dd_search.SEARCH_BASE``). ``grid`` is ``(T_lo, T_hi, n_T, n_seeds)``: n_T
log-spaced training-set sizes and seeds 0..n_seeds-1. Finished configurations are skipped, so a
stage can be rerun at no cost.
"""

from __future__ import annotations

import itertools


def product(**axes) -> list[dict]:
    """Every combination of the axes' values, as override dicts."""
    names = list(axes)
    return [dict(zip(names, c, strict=True)) for c in itertools.product(*axes.values())]


COARSE = (3, 3000, 8, 2)  # short grids for the search
PRESET_GRID = (3, 3000, 13, 3)  # the size of a cpu preset's grid
MLP = {"sparsity": 0.9, "weight_decay": 0.1}  # the MLP base found in stage "coarse"
UNE = {"sparsity": 0.9}

STAGES: dict[str, dict[str, list[tuple[dict, list[dict], tuple]]]] = {
    # 1. the presets' neighbourhood: sparsity x weight decay (mlp), sparsity x label rule (unembed)
    "coarse": {
        "mlp": [
            ({}, [{}], (3, 3000, 10, 2)),  # the old preset itself
            ({}, product(weight_decay=[0.1, 1.0], sparsity=[0.9, 0.99]), COARSE),
        ],
        "unembed": [({}, product(labels=["rule", "random"], sparsity=[0.9, 0.99]), COARSE)],
    },
    # 2. around the first passing configurations: steps, width
    "steps": {
        "mlp": [(MLP, [{"steps": 3000}, {"d_mlp": 16}, {"d_mlp": 32}, {"d_mlp": 128}], COARSE)],
        "unembed": [(UNE, product(labels=["rule", "random"], steps=[3000]), COARSE)],
    },
    # 3. one knob at a time around the stage-2 bests: lr, normalisation, features vs widths, S, wd
    "knobs": {
        "mlp": [
            (
                {**MLP, "steps": 3000},
                [
                    {"lr": 3e-3},
                    {"steps": 1000, "lr": 3e-2},
                    {"normalize": False},
                    {"n_features": 200, "sparsity": 0.95},
                    {"weight_decay": 0.01},
                    {"sparsity": 0.8},
                    {"sparsity": 0.95},
                    {"d_model": 10},
                    {"d_model": 40},
                ],
                COARSE,
            )
        ],
        "unembed": [
            (UNE, [{"labels": "rule", "lr": 3e-2}, {"labels": "rule", "lr": 0.1}], COARSE),
            (UNE, [{"labels": "random", "lr": 3e-2}], COARSE),
            (
                {**UNE, "labels": "rule"},
                [{"sparsity": 0.8}, {"sparsity": 0.95}, {"d_model": 10}, {"d_model": 40}],
                COARSE,
            ),
        ],
    },
    # 4. unembed: a harder rule (more features and tokens, ~10 active) so that generalising starts
    #    later than the linear model's interpolation threshold (T ~ d_model)
    "vocab": {
        "unembed": [
            (
                {"labels": "rule", "lr": 3e-2},
                [{"n_features": 300, "sparsity": 0.967}, {"n_features": 1000, "sparsity": 0.99}],
                (3, 10_000, 9, 2),
            )
        ]
    },
    # 5. mlp: more features per residual dimension (stage 3's best knob), ~10 active each
    "features": {
        "mlp": [
            (
                {**MLP, "n_features": 200, "sparsity": 0.95},
                [{"steps": 1000}, {"n_features": 400, "sparsity": 0.975, "steps": 1000}],
                COARSE,
            )
        ]
    },
    # 6. unembed, 300 features: preset-sized grids; lr and sparsity
    "refine": {
        "unembed": [
            (
                {"labels": "rule", "n_features": 300, "sparsity": 0.967, "lr": 3e-2},
                [{}, {"lr": 1e-2}, {"sparsity": 0.98}, {"sparsity": 0.95}],
                PRESET_GRID,
            )
        ]
    },
    # 7. smoke presets: the settings scaled down to seconds (run with --out runs/dd-smoke)
    "smoke": {
        "mlp": [
            (
                {"n_features": 30, "sparsity": 0.7, "d_model": 8, "d_mlp": 16, "n_test": 256},
                [{"weight_decay": 0.1, "steps": s} for s in (300, 1000)],
                (3, 400, 7, 2),
            )
        ],
        "unembed": [
            (
                {"labels": "rule", "d_model": 8, "lr": 3e-2, "n_test": 256, "sparsity": 0.85},
                [{"n_features": 60}, {"n_features": 120}],
                (3, 1000, 7, 2),
            )
        ],
    },
}
