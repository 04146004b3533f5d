"""Which training points are memorised? Every detector memlens has, each a per-point score
``[inst, T]`` (higher = more likely memorised), run by one call, :func:`find_memorised`, or the
probe ``"memorised"`` (``memlens memorised CKPT`` on the command line):

* ``train_loss``, ``grad_norm``: the plain baselines, each point's loss and gradient norm at w*;
* ``dstar``: maximal data dimensionality D* (the leverage score) at the model's representation
  hook, and ``dstar:HOOK`` at every hook. D* at the input hook reads the data, not the model: it is
  reported but never chosen as the best detector;
* ``dictionary``: membership in the dictionary the model's bundle reads off its weights (covered,
  read back, then its match), and ``dictionary_code``: a small code (fewer slots) scores higher;
* tempering (one :func:`memlens.temper` run over a short temperature ladder, per-point losses at
  every kept SGLD draw, through ``keep_draws``): ``tempering_rise``, each point's mean loss rise
  under tempering at ``temperature`` (default 10); ``tempering_variance``, the mean within-chain
  variance of its loss over the draws; ``influence``, the covariance over draws of its loss with the
  total training loss (the Bayesian influence function of Kreer et al. 2025, with the total loss as
  the query); ``characteristic_temperature``, minus the log of the temperature at which the
  point's datum circuit is noised out (the survival probe; Vaintrob: memorised points are the
  least efficient circuits and die first).

Planted points (:mod:`memlens.planted`) in the training set are the ground truth:
``result.auroc()``, ``result.precision_at_k()`` and ``result.plot()`` (ROC curves) score every
detector against them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from memlens.data import Batch, as_batch
from memlens.hooked import HookedToyModel, require_model
from memlens.probe import Probe
from probes.memorised_result import MemorisedResult, auroc, precision_at_k, ranks

__all__ = [
    "find_memorised",
    "MemorisedProbe",
    "MemorisedResult",
    "DETECTORS",
    "auroc",
    "precision_at_k",
    "ranks",
]

#: every detector family, in the order results list them
DETECTORS = (
    "train_loss",
    "grad_norm",
    "dstar",
    "dictionary",
    "tempering_rise",
    "tempering_variance",
    "influence",
    "characteristic_temperature",
)
_TEMPERING = {"tempering_rise", "tempering_variance", "influence", "characteristic_temperature"}

NOTES = {
    "train_loss": "each point's loss at w* (baseline)",
    "grad_norm": "each point's gradient norm at w* (baseline)",
    "dstar": "D* (leverage) of each point's activation",
    "dictionary": "membership in the dictionary read off the weights",
    "dictionary_code": "size of the point's code in that dictionary (smaller scores higher)",
    "tempering_rise": "mean loss rise over SGLD draws at temperature t",
    "tempering_variance": "loss variance over SGLD draws at temperature t",
    "influence": "covariance over draws of the point's loss with the total loss (BIF)",
    "characteristic_temperature": "temperature at which the point's datum circuit dies (minus log)",
}


def _per_point_grad_norm(model: HookedToyModel, train: Batch) -> Tensor:
    """``[inst, T]`` norm of each point's loss gradient (instances are independent, so one backward
    pass of the summed loss of point j over instances gives every instance's gradient of it)."""
    params = [p for p in model.parameters() if p.requires_grad]
    out = torch.zeros(model.n_instances, len(train))
    for j in range(len(train)):
        row = train.gather(torch.full((1, model.n_instances), j, dtype=torch.long))
        loss = model.per_example_loss(row).sum()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        sq = sum(
            (g.flatten(1) ** 2).sum(1) for g in grads if g is not None
        )  # params are [inst, ...]
        out[:, j] = sq.detach().sqrt().cpu()
    return out


def _dstar_scores(model: HookedToyModel, train: Batch, hooks: Sequence[str] | None):
    from probes.dimensionality import max_data_dimensionality

    names = list(model.hook_dict) if hooks is None else list(hooks)
    with torch.no_grad():
        _, cache = model.run_with_cache(train.inputs, names_filter=names)
    out, data_only = {}, []
    rep = model.representation_hook
    for h in names:
        d = max_data_dimensionality(cache[h], n_instances=model.n_instances).cpu()
        out["dstar" if h == rep else f"dstar:{h}"] = d
        if h == "hook_in":
            data_only.append(f"dstar:{h}")
    return out, data_only


def _dictionary_scores(model: HookedToyModel, train: Batch) -> dict[str, Tensor]:
    from memlens.registry import bundle_of
    from probes.dictionary import DictionaryProbe

    try:
        bundle_of(model)
    except (ValueError, LookupError):
        return {}
    if bundle_of(model).read_dictionary is None:
        return {}
    res = DictionaryProbe(train=train).read(model)
    if res.covered is None:
        return {}
    score = res.covered.float() + res.read_back.float()
    match = torch.zeros_like(score)
    for e in res.entries:
        if e.key is not None and e.match == e.match:
            match[e.instance, e.key] = max(float(match[e.instance, e.key]), e.match)
    out = {"dictionary": score + 0.5 * match.clamp(0, 1)}
    if res.code_size is not None:
        c = res.code_size.float()
        out["dictionary_code"] = torch.where(c > 0, 1.0 / c, torch.zeros_like(c))
    return out


def _tempering_scores(
    model: HookedToyModel,
    train: Batch,
    temperature: float,
    ladder: Sequence[float],
    want: set[str],
    seed: int,
    progress: bool,
    settings: dict,
) -> tuple[dict[str, Tensor], dict]:
    import memlens
    from memlens.sampling.sgld import expand_batch

    temps = sorted({float(t) for t in (*ladder, temperature)})
    survive = "characteristic_temperature" in want and len(temps) > 1
    probes = ["survival"] if survive else []
    kw = {"chains": 4, "draws": 100, **settings}
    res = memlens.temper(
        model,
        train,
        temps if survive else [temperature],
        probes=probes,
        keep_draws=True,
        progress=progress,
        seed=seed,
        **kw,
    )
    n_t, chains, n_inst = len(res.temperatures), kw["chains"], model.n_instances
    a = [float(t) for t in res.temperatures].index(float(temperature))
    expanded = model.expand(n_t * chains)
    data = expand_batch(train, n_t * chains)
    with torch.no_grad():
        w0 = model.per_example_loss(train).detach().cpu()  # [T, inst]
        draws = []
        for state in res.kept_draws:
            expanded.load_state_dict(state)
            draws.append(expanded.per_example_loss(data).detach().cpu())
    L = torch.stack(draws).view(len(draws), len(train), n_t, chains, n_inst)[:, :, a]
    L = L.permute(2, 3, 1, 0).double()  # [chain, inst, T, draw]
    bad = res.diagnostics.diverged[a].cpu()  # [chain, inst]
    L = L.masked_fill(bad[..., None, None], math.nan)
    out: dict[str, Tensor] = {}
    out["tempering_rise"] = (L.nanmean(-1).nanmean(0) - w0.T.double()).float()
    out["tempering_variance"] = L.var(-1).nanmean(0).float()
    total = L.sum(2, keepdim=True)
    cov = ((L - L.mean(-1, keepdim=True)) * (total - total.mean(-1, keepdim=True))).mean(-1)
    out["influence"] = cov.nanmean(0).float()
    info = {
        "temperature": float(temperature),
        "ladder": temps,
        "healthy": res.health.ok.tolist(),
        "llc": res.llc.mean.tolist(),
        "seconds": float(res.seconds),
        "step_size": res.config.step_size,
        "thin": res.config.thin,
    }
    if survive:
        sv = res.probes["survival"].result()
        datum = torch.tensor([n.startswith("datum:") for n in sv.names])
        tc = sv.characteristic_temperature[:, datum].double()  # [inst, T]
        out["characteristic_temperature"] = (-tc.clamp_min(1e-30).log()).float()
    return {k: v for k, v in out.items() if k in want}, info


def find_memorised(
    model: HookedToyModel,
    train: Tensor | Batch,
    *,
    detectors: Sequence[str] | None = None,
    hooks: Sequence[str] | None = None,
    temperature: float | None = None,
    ladder: Sequence[float] | None = None,
    seed: int = 0,
    progress: bool = True,
    **sgld: Any,
) -> MemorisedResult:
    """Score every training point by every detector (module docstring).

    Args:
        model: the trained model; train: its training set (a ``Batch``; its ``planted`` field,
            when set, is the ground truth the result scores the detectors against).
        detectors: a subset of :data:`DETECTORS` (default: all).
        hooks: the hooks D* is read at (default: every hook of the model).
        temperature: the temperature t of the tempering scores (default 10).
        ladder: the temperatures the characteristic temperature is read over (default t/10, t,
            10t); the sampler runs them all at once.
        seed: the sampler's seed; progress: progress bars; ``sgld``: sampler settings
            (``chains`` 4, ``draws`` 100, ``step_size``, ...).
    """
    require_model(model)
    want = set(DETECTORS if detectors is None else detectors)
    unknown = sorted(want - set(DETECTORS))
    if unknown:
        raise ValueError(f"unknown detector(s) {unknown}; known: {', '.join(DETECTORS)}")
    t = 10.0 if temperature is None else temperature
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0 or t == math.inf:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    ladder = (t / 10, t, t * 10) if ladder is None else tuple(ladder)
    if hooks is not None:
        bad = [h for h in hooks if h not in model.hook_dict]
        if bad:
            raise ValueError(f"unknown hook(s) {bad}; the model's hooks: {list(model.hook_dict)}")
    train = model.check_batch(as_batch(train)).to(model.device)
    if train.lengths is not None:
        raise ValueError("find_memorised needs one unpadded training set (train.lengths=None)")
    scores: dict[str, Tensor] = {}
    data_only: list[str] = []
    extra: dict = {}
    if "train_loss" in want:
        with torch.no_grad():
            scores["train_loss"] = model.per_example_loss(train).T.detach().cpu()
    if "grad_norm" in want:
        scores["grad_norm"] = _per_point_grad_norm(model, train)
    if "dstar" in want:
        d, data_only = _dstar_scores(model, train, hooks)
        scores.update(d)
    if "dictionary" in want:
        scores.update(_dictionary_scores(model, train))
    if want & _TEMPERING:
        s, extra["tempering"] = _tempering_scores(
            model, train, t, ladder, want, seed, progress, sgld
        )
        scores.update(s)
    notes = {k: NOTES.get(k.split(":")[0], "") for k in scores}
    for k in scores:
        if k.startswith("dstar:"):
            notes[k] = f"D* at {k.split(':', 1)[1]}"
    planted = None if train.planted is None else train.planted.T.cpu()
    return MemorisedResult(scores, planted, notes, data_only, extra)


class MemorisedProbe(Probe):
    """The probe ``"memorised"``: :func:`find_memorised` on the probe's training set.

        memlens.probes_run = MemorisedProbe(train=train).run(model)   # or probing(...) / CLI

    Arguments are :func:`find_memorised`'s (``detectors``, ``hooks``, ``temperature``, ...)."""

    #: every detector name, and the Python entry point, for code that finds this probe through
    #: the registry (``memlens.get_probe("memorised")``) instead of importing this module
    DETECTORS = DETECTORS
    find = staticmethod(find_memorised)

    hooks = ()

    def __init__(self, train: Tensor | Batch | None = None, **kw: Any):
        super().__init__(train=None if train is None else as_batch(train))
        self.kw = kw

    def read(self, model: HookedToyModel) -> MemorisedResult:
        if self.train is None:
            raise ValueError("probe 'memorised' needs the training set: pass train=")
        self.model = model
        return find_memorised(model, self.train, **self.kw)

    def result(self) -> MemorisedResult:
        if self.model is None:
            raise ValueError("MemorisedProbe is not attached: use run(model, train)")
        return self.read(self.model)
