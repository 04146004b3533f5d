"""Bad inputs to the core API: train, evaluate, sparse_activations, SparseFeatures (and sample /
batches), each model's constructor and from_config, and the bundles' build / data / full_spec.

Each row must be refused with the right exception type, a message naming the field, before any
training step and without touching ``tmp_path`` (see ``refusal.assert_refused``)."""

from __future__ import annotations

import math

import pytest
import torch
from refusal import Case, params

import memlens as ml
from memlens.data import Batch, SparseFeatures
from memlens.registry import get_bundle
from toy_models import Bottleneck, MLPBlock, Unembed
from toy_models.bottleneck import BottleneckConfig
from toy_models.mlp import MLPConfig
from toy_models.unembed import UnembedConfig

pytestmark = pytest.mark.user_errors

NAN, INF = math.nan, math.inf
N_FEAT, N_INST, T = 6, 2, 8


def bn() -> Bottleneck:
    return Bottleneck(n_features=N_FEAT, d_hidden=2, n_instances=N_INST)


def X() -> torch.Tensor:
    return SparseFeatures(N_FEAT, 0.5).sample(T, N_INST, seed=0)


def poisoned(value: float, at=(3, 1, 2)) -> torch.Tensor:
    x = X()
    x[at] = value
    return x


def sf(**kw) -> SparseFeatures:
    return SparseFeatures(N_FEAT, **({"sparsity": 0.5} | kw))


def fit(**kw):
    """``ml.train`` on a tiny bottleneck with ``kw`` overriding the defaults."""
    args = {"model": bn(), "data": X(), "steps": 10, "progress": False} | kw
    return ml.train(args.pop("model"), args.pop("data"), **args)


def _T(case_id, field, exc=ValueError, **kw):
    return Case(f"train-{case_id}", lambda tmp: fit(**kw), exc, field)


CASES: list[Case] = []

# ------------------------------------------------------------------------------------ train
CASES += [
    _T("model-str", "model", TypeError, model="bottleneck"),
    _T("model-module", "model", TypeError, model=torch.nn.Linear(2, 2)),
    *[_T(f"steps-{v!r}", "steps", steps=v) for v in (0, -1, 1.5, True, "10", None)],
    *[_T(f"lr-{v!r}", "lr", lr=v) for v in (0, -1e-3, NAN, INF, "1e-3", True, None)],
    *[_T(f"wd-{v!r}", "weight_decay", weight_decay=v) for v in (-1, NAN, INF, "0", True, None)],
    *[_T(f"warmup-{v!r}", "warmup", warmup=v) for v in (-1, 11, 1.5, True)],
    *[_T(f"schedule-{v!r}", "schedule", schedule=v) for v in ("linear", None, 3)],
    *[_T(f"batch_size-{v!r}", "batch_size", batch_size=v) for v in (0, -2, 2.5, True, "4")],
    *[_T(f"seed-{v!r}", "seed", seed=v) for v in (1.7, "0", True, None)],
    *[_T(f"l1-{v!r}", "l1", l1=v) for v in (-1, NAN, INF, "0.1", True)],
    _T("l1_hook-unknown", "hook_nope", l1_hook="hook_nope"),
    _T("l1_hook-int", "l1_hook", l1_hook=3),
    *[_T(f"progress-{v!r}", "progress", progress=v) for v in ("yes", 1, None)],
    _T("desc-int", "desc", desc=3),
    # the training data
    _T("data-nan", r"data inputs.*NaN.*\[3, 1, 2\]", data=poisoned(NAN)),
    _T("data-inf", r"data inputs.*\[0, 0, 0\]", data=poisoned(INF, (0, 0, 0))),
    _T("data-neg-inf", r"data inputs.*\[7, 1, 5\]", data=poisoned(-INF, (7, 1, 5))),
    _T("data-int", r"data inputs.*floating", data=(X() > 0).long()),
    _T("data-bool", r"data inputs.*floating", data=X() > 0),
    _T("data-complex", r"data inputs", data=X().to(torch.complex64)),
    _T("data-instances", r"instance", data=SparseFeatures(N_FEAT, 0.5).sample(T, 3)),
    _T("data-features", r"feat=6", data=SparseFeatures(N_FEAT + 1, 0.5).sample(T, N_INST)),
    _T("data-2d", r"inst", data=X()[:, 0]),
    _T("data-4d", r"inst", data=X()[None]),
    _T("data-empty", r"data.*point", data=X()[:0]),
    _T("data-list", r"Tensor", TypeError, data=X().tolist()),
    _T("data-str", r"Tensor", TypeError, data="train.pt"),
    _T("data-none", r"Tensor", TypeError, data=None),
    _T("data-infinite-no-batch", r"batch_size", data=sf()),
    _T("data-infinite-instances", r"n_instances", data=sf(sparsity=[0.5] * 3), batch_size=4),
    _T(
        "data-nan-targets",
        r"data targets.*\[2, 0, 1\]",
        data=Batch(X(), targets=poisoned(NAN, (2, 0, 1))),
    ),
    _T("data-lengths-too-long", r"lengths", data=Batch(X(), lengths=torch.tensor([T, T + 1]))),
    _T("data-lengths-zero", r"lengths", data=Batch(X(), lengths=torch.tensor([0, T]))),
    _T("test-nan", r"test inputs.*\[3, 1, 2\]", test=poisoned(NAN)),
    _T("test-instances", r"instance", test=SparseFeatures(N_FEAT, 0.5).sample(T, 3)),
    _T("test-list", r"Tensor", TypeError, test=[1.0, 2.0]),
]


# --------------------------------------------------------------------- evaluate, sparse_activations
def _enter(cm):
    with cm:
        pass


CASES += [
    Case("evaluate-model", lambda tmp: ml.evaluate("m", X()), TypeError, "model"),
    Case(
        "evaluate-nan",
        lambda tmp: ml.evaluate(bn(), poisoned(NAN)),
        ValueError,
        r"data inputs.*\[3, 1, 2\]",
    ),
    Case("evaluate-int", lambda tmp: ml.evaluate(bn(), X().long()), ValueError, "floating"),
    *[
        Case(
            f"evaluate-chunk-{v!r}",
            lambda tmp, v=v: ml.evaluate(bn(), X(), chunk=v),
            ValueError,
            "chunk",
        )
        for v in (0, -5, 1.5, True, "8")
    ],
    *[
        Case(
            f"sparse_activations-coeff-{v!r}",
            lambda tmp, v=v: _enter(ml.sparse_activations(bn(), v)),
            ValueError,
            "coeff",
        )
        for v in (-1, NAN, INF, "0.1", True)
    ],
    Case(
        "sparse_activations-hook",
        lambda tmp: _enter(ml.sparse_activations(bn(), 0.1, "nope")),
        ValueError,
        r"'nope'.*hooks",
    ),
    Case(
        "sparse_activations-model",
        lambda tmp: _enter(ml.sparse_activations("m", 0.1)),
        TypeError,
        "model",
    ),
]


# ------------------------------------------------------------------------------ SparseFeatures
def _SF(case_id, field, exc=ValueError, **kw):
    return Case(f"SparseFeatures-{case_id}", lambda tmp: SparseFeatures(**kw), exc, field)


CASES += [
    *[
        _SF(f"n_features-{v!r}", "n_features", n_features=v, sparsity=0.5)
        for v in (0, -1, 2.5, "5", True, None)
    ],
    *[
        _SF(f"sparsity-{v!r}", "sparsity", n_features=4, sparsity=v)
        for v in (1.0, -0.1, NAN, INF, "0.9", True, [0.5, 1.2], [[0.1]], [], [0.5, "x"])
    ],
    *[
        _SF(
            f"feature_probability-{v!r}", "feature_probability", n_features=4, feature_probability=v
        )
        for v in (0, 1.5, NAN, "0.1")
    ],
    _SF("both", "sparsity", n_features=4, sparsity=0.5, feature_probability=0.5),
    _SF("neither", "sparsity", n_features=4),
    *[
        _SF(f"importance-{i}", "importance", n_features=3, sparsity=0.5, importance=v)
        for i, v in enumerate(([NAN, 1, 1], [-1, 1, 1], [1, 1], ["a", 1, 1], [INF, 1, 1]))
    ],
    *[
        _SF(f"normalize-{v!r}", "normalize", n_features=4, sparsity=0.5, normalize=v)
        for v in ("no", 1, None)
    ],
    *[
        _SF(f"data_version-{v!r}", "data_version", n_features=4, sparsity=0.5, data_version=v)
        for v in (3, 0, True, "2")
    ],
]


def _S(case_id, field, **kw):
    return Case(f"sample-{case_id}", lambda tmp: sf().sample(**({"T": 4} | kw)), ValueError, field)


def _B(case_id, field, **kw):
    return Case(
        f"batches-{case_id}",
        lambda tmp: sf().batches(**({"batch_size": 4} | kw)),
        ValueError,
        field,
    )


CASES += [
    *[_S(f"T-{v!r}", r"\bT\b", T=v) for v in (0, -1, 1.5, True, "10", None)],
    _S("T-huge", r"T=10000000000000.*memory", T=10**13),
    *[_S(f"n_instances-{v!r}", "n_instances", n_instances=v) for v in (0, -1, 1.5, True, "2")],
    Case(
        "sample-n_instances-per-instance",
        lambda tmp: sf(sparsity=[0.5, 0.6]).sample(4, 3),
        ValueError,
        "n_instances",
    ),
    *[_S(f"seed-{v!r}", "seed", seed=v) for v in (1.7, "0", True, None, 2.0)],
    *[_B(f"batch_size-{v!r}", "batch_size", batch_size=v) for v in (0, 1.5, True, None)],
    _B("batch_size-huge", r"batch_size.*memory", batch_size=10**13),
    _B("seed-float", "seed", seed=0.5),
    _B("n_instances-zero", "n_instances", n_instances=0),
]


# ------------------------------------------------------------------------------ the models
def _M(cls, case_id, field, exc=ValueError, **kw):
    return Case(f"{cls.__name__}-{case_id}", lambda tmp: cls(**kw), exc, field)


BN = {"n_features": 5, "d_hidden": 2}
MLP = {"d_model": 4, "d_mlp": 8, "d_out": 4}
UN = {"d_model": 4, "d_vocab": 6}
CASES += [
    *[
        _M(Bottleneck, f"n_features-{v!r}", "n_features", **BN | {"n_features": v})
        for v in (0, 2.5, "5", True)
    ],
    *[_M(Bottleneck, f"d_hidden-{v!r}", "d_hidden", **BN | {"d_hidden": v}) for v in (0, -1, 1.5)],
    *[
        _M(Bottleneck, f"n_instances-{v!r}", "n_instances", **BN | {"n_instances": v})
        for v in (0, 1.5, True)
    ],
    *[_M(Bottleneck, f"tied-{v!r}", "tied", **BN | {"tied": v}) for v in ("yes", 1)],
    *[
        _M(Bottleneck, f"importance-{i}", "importance", **BN | {"importance": v})
        for i, v in enumerate(([NAN] * 5, [-1] * 5, [1] * 4, ["a"] * 5))
    ],
    *[_M(Bottleneck, f"seed-{v!r}", "seed", **BN | {"seed": v}) for v in (1.7, "0")],
    *[
        _M(MLPBlock, f"{k}-{v!r}", k, **MLP | {k: v})
        for k, v in (
            ("d_model", 0),
            ("d_model", 1.5),
            ("d_mlp", 0),
            ("d_mlp", True),
            ("d_out", 0),
            ("d_out", "3"),
            ("n_instances", 0),
            ("seed", 1.5),
        )
    ],
    *[
        _M(Unembed, f"{k}-{v!r}", k, **UN | {k: v})
        for k, v in (
            ("d_model", 0),
            ("d_vocab", 0),
            ("d_vocab", 1.5),
            ("n_instances", -1),
            ("seed", None),
        )
    ],
    Case("from_config-str", lambda tmp: Bottleneck.from_config("x"), TypeError, "Config"),
    Case(
        "from_config-wrong-class",
        lambda tmp: Bottleneck.from_config(MLPConfig(**MLP)),
        TypeError,
        "BottleneckConfig",
    ),
    Case(
        "BottleneckConfig-n_features",
        lambda tmp: BottleneckConfig(n_features=0),
        ValueError,
        "n_features",
    ),
    Case(
        "BottleneckConfig-from_dict-unknown",
        lambda tmp: BottleneckConfig.from_dict({"bogus": 1}),
        ValueError,
        "bogus",
    ),
    Case("MLPConfig-d_mlp", lambda tmp: MLPConfig(**MLP | {"d_mlp": -1}), ValueError, "d_mlp"),
    Case(
        "UnembedConfig-d_vocab",
        lambda tmp: UnembedConfig(**UN | {"d_vocab": 1.5}),
        ValueError,
        "d_vocab",
    ),
]


# ------------------------------------------------------------------------------ the bundles
def _bundle_rows(name: str) -> list[Case]:
    b = lambda: get_bundle(name)  # noqa: E731
    spec = {"T": 4, "seed": 0}
    return [
        Case(
            f"{name}-full_spec-unknown",
            lambda tmp: b().full_spec({"bogus": 1}),
            ValueError,
            "bogus",
        ),
        Case(f"{name}-build-seed", lambda tmp: b().build(spec | {"seed": 1.5}), ValueError, "seed"),
        Case(
            f"{name}-build-sparsity",
            lambda tmp: b().build(spec | {"sparsity": 1.5}),
            ValueError,
            "sparsity",
        ),
        Case(
            f"{name}-build-normalize",
            lambda tmp: b().build(spec | {"normalize": "no"}),
            ValueError,
            "normalize",
        ),
        Case(
            f"{name}-build-n_features",
            lambda tmp: b().build(spec | {"n_features": 0}),
            ValueError,
            "n_features",
        ),
        Case(f"{name}-data-T-zero", lambda tmp: b().data(spec | {"T": 0}), ValueError, r"\bT\b"),
        Case(f"{name}-data-T-float", lambda tmp: b().data(spec | {"T": 2.5}), ValueError, r"\bT\b"),
        Case(f"{name}-data-no-T", lambda tmp: b().data({"seed": 0}), ValueError, r"\bT\b"),
        Case(
            f"{name}-data-n_test", lambda tmp: b().data(spec | {"n_test": 0}), ValueError, "n_test"
        ),
        Case(f"{name}-data-seed", lambda tmp: b().data(spec | {"seed": "1"}), ValueError, "seed"),
        Case(f"{name}-preset", lambda tmp: b().preset("nope"), ValueError, "nope"),
    ]


CASES += _bundle_rows("bottleneck") + _bundle_rows("mlp") + _bundle_rows("unembed")


@pytest.mark.parametrize("case", params(CASES))
def test_refused(case: Case, tmp_path):
    case.check(tmp_path)


def test_a_plain_module_is_refused_with_the_wrapper_named():
    """train, temper, estimate_llc and find_memorised refuse a bare nn.Module before any work,
    and say how to wrap it (a researcher's own transformer is the common case)."""
    from probes.memorised import find_memorised

    module = torch.nn.Linear(2, 2)
    x = torch.zeros(4, 1, 2)
    calls = {
        "train": lambda: ml.train(module, x, steps=1),
        "temper": lambda: ml.temper(module, x, [1.0]),
        "estimate_llc": lambda: ml.estimate_llc(module, x),
        "find_memorised": lambda: find_memorised(module, x),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError, match=r"HookedToyModel.*memlens\.StackedModel"):
            call()
            pytest.fail(f"{name} accepted a bare nn.Module")
