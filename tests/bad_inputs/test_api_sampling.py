"""Bad inputs to the sampler: temper, estimate_llc, calibrate and SGLDConfig. Every row is refused
before any SGLD step (``refusal.WORK`` patches the sampler's runs to raise)."""

from __future__ import annotations

import math

import pytest
import torch
from refusal import Case, params

import memlens as ml
from memlens.data import SparseFeatures
from memlens.sampling import SGLDConfig
from toy_models import Bottleneck

pytestmark = pytest.mark.user_errors

NAN, INF = math.nan, math.inf
N_FEAT, N_INST, T = 5, 2, 8


def bn() -> Bottleneck:
    return Bottleneck(n_features=N_FEAT, d_hidden=2, n_instances=N_INST)


def X() -> torch.Tensor:
    return SparseFeatures(N_FEAT, 0.5).sample(T, N_INST, seed=0)


def nan_at(idx, value: float = NAN) -> torch.Tensor:
    x = X()
    x[idx] = value
    return x


def tmp_run(fn, **kw):
    """``fn(model, data, ...)`` with small settings and an explicit step size unless overridden."""
    args = {"chains": 2, "draws": 8, "step_size": 1e-3, "progress": False} | kw
    model, data = args.pop("model", None) or bn(), args.pop("data", None)
    return fn(model, X() if data is None else data, **args)


def _t(case_id, field, exc=ValueError, **kw):
    return Case(f"temper-{case_id}", lambda tmp: tmp_run(ml.temper, **kw), exc, field)


CASES: list[Case] = [
    *[
        _t(f"temperatures-{v!r}", "temperatures", temperatures=v)
        for v in ([], [-1.0], [0.0], [NAN], [INF], "hot", [[1.0, 2.0]], [1.0, "2"])
    ],
    *[
        _t(f"step_size-{v!r}", "step_size", step_size=v)
        for v in ("1e-3", -1e-3, 0, NAN, INF, True, [], [[1e-3]], [1e-3, 1e-3])
    ],
    *[_t(f"chains-{v!r}", "chains", chains=v) for v in (0, 1.5, True, "4")],
    *[_t(f"draws-{v!r}", "draws", draws=v) for v in (1, 0, 2.5)],
    *[_t(f"burnin-{v!r}", "burnin", burnin=v) for v in (8, -1, 1.5)],
    *[_t(f"thin-{v!r}", "thin", thin=v) for v in (0, 1.5)],
    *[_t(f"localization-{v!r}", "localization", localization=v) for v in (-1, NAN, INF, "1")],
    *[_t(f"nbeta-{v!r}", "nbeta", nbeta=v) for v in (-1, 0, NAN, [1.0, 2.0, 3.0], "10")],
    *[_t(f"batch_size-{v!r}", "batch_size", batch_size=v) for v in (0, 2.5)],
    *[_t(f"seed-{v!r}", "seed", seed=v) for v in (1.5, "0", None)],
    _t("eval_size-0", "eval_size", eval_size=0),
    _t("eval_every-0", "eval_every", eval_every=0),
    _t("blowup-0", "blowup", blowup=0),
    *[_t(f"max_diffusion-{v!r}", "max_diffusion", max_diffusion=v) for v in (-1, NAN, 0, INF)],
    _t("max_rhat-1", "max_rhat", max_rhat=1.0),
    _t("min_ess-0", "min_ess", min_ess=0),
    *[_t(f"bias_tolerance-{v!r}", "bias_tolerance", bias_tolerance=v) for v in (1.5, 0)],
    _t("max_steps-0", "max_steps", max_steps=0),
    *[_t(f"precision-{v!r}", "precision", precision=v) for v in (0, 1.0, -0.1, NAN, "3%")],
    *[_t(f"max_draws-{v!r}", "max_draws", max_draws=v) for v in (1, 2.5, None)],
    *[_t(f"integrator-{v!r}", "integrator", integrator=v) for v in ("leapfrog", None, "LM")],
    _t("unknown-setting", "stepsize", stepsize=1e-3),
    _t("config-str", "config", TypeError, config="fast"),
    *[_t(f"probe_every-{v!r}", "probe_every", probe_every=v) for v in (0, 1.5)],
    _t("probes-unknown", "nope", probes=["nope"]),
    _t("probes-bad-pair", "probe", probes=[("survival",)]),
    _t("model-str", "model", TypeError, model="bottleneck"),
    _t("data-list", "data", TypeError, data=[[0.0] * N_FEAT]),
    _t("data-nan", r"data inputs.*NaN.*\[2, 1, 3\]", data=nan_at((2, 1, 3))),
    _t("data-inf", r"data inputs.*\[0, 0, 0\]", data=nan_at((0, 0, 0), INF)),
    _t("data-instances", "instance", data=SparseFeatures(N_FEAT, 0.5).sample(T, 3)),
    _t("data-int", "floating", data=X().long()),
    _t("data-one-point", "nβ|points", data=X()[:1], step_size=1e-3),
    Case(
        "estimate_llc-temperatures",
        lambda tmp: tmp_run(ml.estimate_llc, temperatures=[1.0, 2.0]),
        ValueError,
        "temperature",
    ),
    Case(
        "estimate_llc-step_size",
        lambda tmp: tmp_run(ml.estimate_llc, step_size="small"),
        ValueError,
        "step_size",
    ),
    Case(
        "estimate_llc-data-nan",
        lambda tmp: tmp_run(ml.estimate_llc, data=nan_at((1, 0, 0))),
        ValueError,
        r"data inputs.*\[1, 0, 0\]",
    ),
    Case(
        "calibrate-explicit-step",
        lambda tmp: tmp_run(ml.calibrate, chains=2),
        ValueError,
        "step_size",
    ),
    Case(
        "calibrate-data-nan",
        lambda tmp: tmp_run(ml.calibrate, step_size="auto", data=nan_at((4, 1, 0))),
        ValueError,
        r"data inputs.*\[4, 1, 0\]",
    ),
    Case(
        "calibrate-temperatures",
        lambda tmp: tmp_run(ml.calibrate, step_size="auto", temperatures=[-1.0]),
        ValueError,
        "temperatures",
    ),
    Case(
        "calibrate-max_steps",
        lambda tmp: tmp_run(ml.calibrate, step_size="auto", max_steps=-5),
        ValueError,
        "max_steps",
    ),
    Case(
        "SGLDConfig-from_dict-unknown",
        lambda tmp: SGLDConfig.from_dict({"chain": 2}),
        ValueError,
        "chain",
    ),
    Case("SGLDConfig-replace", lambda tmp: SGLDConfig().replace(draws=-3), ValueError, "draws"),
    Case("SGLDConfig-make-config", lambda tmp: SGLDConfig.make({"chains": 2}), TypeError, "config"),
]


@pytest.mark.parametrize("case", params(CASES))
def test_refused(case: Case, tmp_path):
    case.check(tmp_path)
