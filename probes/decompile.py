"""Decompile a distributed dictionary: each training point's code, read back through hooks.

A memorising MLP block trained with plain AdamW stores its training set in a *distributed* code:
each neuron fires on about half the points, so no neuron is a slot of its own and the weight-level
reader (``toy_models.mlp.read_dictionary``) finds entries for about a third of the points. Yet the
block is still a lookup table if each point has a small set of neurons, its **code**, that returns
the point's output for that point and for no other.

The decompiler finds these codes by running the model with patching hooks (so it works on any
model whose hook carries ``[batch, inst, units]`` and may be patched; ``hook_post`` of the MLP block
by default; a ``memlens.StackedModel``'s hooks only read, and refuse a patch). Reading back
through a set S of units means zeroing every other unit at the hook and running the rest of the
model; the read-back error of S on point j is

    err(S, j) = ‖y_S(x_j) − y(x_j)‖ / ‖y(x_j) − y_∅(x_j)‖

against the model's **own** output y (not the target), relative to what the hook's units write
(y_∅: every unit zeroed). For each point, greedily:

1. *grow*: add the active unit that lowers err(S, j) most, until err ≤ ``rtol`` (at most
   ``max_code`` units: no code then);
2. *prune*: drop units while err stays ≤ ``rtol`` (the greedy's early picks can become redundant);
3. *specificity*: the code must **not** read back any other training point: err(S, j') > ``rtol``
   for every other non-trivial j', read through S alone (every other unit zeroed) as well.

A point is *covered* when it has a specific code. On the MLP block the greedy codes are almost
always minimal: ``benchmarks/decompile_dictionary.py`` finds 65 of 67 as small as the smallest
subset of the point's active neurons that reads it back, the others one neuron over.

Limits: specificity is checked against the training set only, so a generalising model whose
neurons are combinations of features also has specific codes for many points (25-42% of the
generalising story model's): read decompiled coverage on models that can memorise (T ≤ d_mlp).
Hooks with more axes than ``[batch, inst, units]`` (a transformer's ``[batch, inst, pos, d_mlp]``)
are refused: which positions' outputs a code must read back is the model's to say.

Every code is checked by the hooked run that finds it, so ``read_back`` is exact by construction:
an entry's ``value`` is what the model returns through the code alone. The code's ``weights`` are
the units' activations on the point (the coefficients of their value vectors ``W_out[:, k]`` in
the MLP block).
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor

from memlens.bundle import bundle_of
from memlens.data import Batch, as_batch
from memlens.hooked import HookedToyModel
from memlens.lookup import DictEntry, DictionaryResult, features_above, padding_mask

__all__ = ["decompile"]

_CHUNK = 2**21  # output elements per masked forward pass
_PAIRS = 2**15  # (code, point) pairs per batch of the specificity check


def _check(model, train, hook: str | None, rtol, max_code):
    if not isinstance(model, HookedToyModel):
        raise TypeError(f"decompile needs a HookedToyModel, got {type(model).__name__}")
    if train is None:
        raise ValueError("decompile needs the training set (train=...) to name each code's point")
    hook = hook or model.representation_hook
    if hook not in model.hook_dict:
        raise ValueError(f"unknown hook {hook!r}; the model's hooks: {sorted(model.hook_dict)}")
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 < rtol < 1:
        raise ValueError(f"rtol must be a number in (0, 1), got {rtol!r}")
    if max_code is not None and (
        isinstance(max_code, bool) or not isinstance(max_code, int) or max_code < 1
    ):
        raise ValueError(f"max_code must be a positive int or None (no cap), got {max_code!r}")
    return model.check_batch(as_batch(train), "train"), hook


def _run(model, hook: str, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Outputs ``[rows, inst, out]`` and the hook's activations ``[rows, inst, units]`` of inputs
    ``x``; with ``mask`` (``[rows, inst, units]``) the hook's activations are multiplied by it
    (0: the unit is ablated). Runs in chunks of about ``_CHUNK`` elements."""
    rows = x.shape[0]
    per_row = max(1, x[:1].numel(), 0 if mask is None else mask[:1].numel())
    step = max(1, _CHUNK // (4 * per_row))
    outs, acts = [], []
    for start in range(0, rows, step):
        m = None if mask is None else mask[start : start + step].to(x.device)
        seen = {}

        def fwd(act, hook=None, m=m, seen=seen):
            if act.dim() != 3:
                raise ValueError(
                    "decompile needs a hook with activations [batch, inst, units]; "
                    f"{hook.name!r} gives {tuple(act.shape)}"
                )
            seen["act"] = act.detach()
            return act if m is None else act * m

        with model.hooks(fwd_hooks=[(hook, fwd)]):
            y = model(x[start : start + step])
        outs.append(y.detach().reshape(y.shape[0], y.shape[1], -1).cpu())
        acts.append(seen["act"].cpu())
    return torch.cat(outs), torch.cat(acts)


def _errors(model, hook, x: Tensor, masks: Tensor, ref: Tensor, scale: Tensor) -> Tensor:
    """``[rows, inst]``: the read-back error of each row's mask against ``ref`` ``[rows, inst,
    out]``, relative to ``scale`` ``[rows, inst]``."""
    out, _ = _run(model, hook, x, masks)
    return (out - ref).norm(dim=-1) / scale.clamp_min(1e-30)


def _errors_per_unit(model, hook, X, Y, dn, rows, masks):
    """The read-back error ``[r, K, inst]`` of ``rows`` under each of their ``K`` candidate masks
    ``masks`` ``[r, K, inst, K]`` (one unit added to or dropped from a code)."""
    K, inst = masks.shape[1], masks.shape[2]
    return _errors(
        model,
        hook,
        X[rows].repeat_interleave(K, 0),
        masks.flatten(0, 1).float(),
        Y[rows].repeat_interleave(K, 0),
        dn[rows].repeat_interleave(K, 0),
    ).view(len(rows), K, inst)


def _grow(model, hook, X, A, Y, dn, todo, rtol, max_code):
    """Greedy forward selection of each (point, instance)'s code. Returns the masks ``[T, inst,
    K]`` and each point's error reached."""
    T, inst, K = A.shape
    code = torch.zeros(T, inst, K, dtype=torch.bool)
    err = torch.full((T, inst), math.inf)
    err[~todo] = 0.0
    for _ in range(K if max_code is None else min(max_code, K)):
        open_ = todo & (err > rtol)
        rows = open_.any(-1).nonzero().flatten()
        if len(rows) == 0:
            break
        cand = (A[rows] != 0) & ~code[rows]  # [r, inst, K]
        masks = code[rows, None] | torch.eye(K, dtype=torch.bool)[None, :, None]  # [r, K, inst, K]
        e = _errors_per_unit(model, hook, X, Y, dn, rows, masks)
        e = torch.where(cand.transpose(1, 2), e, torch.full_like(e, math.inf))
        best_e, best_k = e.min(1)  # [r, inst]
        take = open_[rows] & torch.isfinite(best_e)
        ri, ii = take.nonzero(as_tuple=True)
        code[rows[ri], ii, best_k[ri, ii]] = True
        err[rows[ri], ii] = best_e[ri, ii]
        if not take.any():
            break
    return code, err


def _prune(model, hook, X, Y, dn, code, found, rtol):
    """Drop units from found codes while the read-back error stays within ``rtol``."""
    T, inst, K = code.shape
    err = torch.zeros(T, inst)
    live = found.clone()
    while live.any():
        rows = live.any(-1).nonzero().flatten()
        masks = code[rows, None] & ~torch.eye(K, dtype=torch.bool)[None, :, None]
        e = _errors_per_unit(model, hook, X, Y, dn, rows, masks)
        member = code[rows].transpose(1, 2) & (code[rows].sum(-1) > 1)[:, None, :]
        e = torch.where(member, e, torch.full_like(e, math.inf))
        best_e, best_k = e.min(1)
        drop = live[rows] & (best_e <= rtol)
        ri, ii = drop.nonzero(as_tuple=True)
        code[rows[ri], ii, best_k[ri, ii]] = False
        live[rows] = drop
    # the final codes' errors, in one pass
    rows = found.any(-1).nonzero().flatten()
    if len(rows):
        err[rows] = _errors(model, hook, X[rows], code[rows].float(), Y[rows], dn[rows])
    return code, err


def _specificity(model, hook, X, A, Y, dn, code, found, trivial):
    """``[T, inst]``: for each found code, the smallest read-back error it gives on any *other*
    non-trivial training point (inf when there is none). A code is specific when this is above
    ``rtol``. Runs the (code, other point) pairs in batches of about ``_PAIRS`` rows."""
    T, inst, _ = code.shape
    # a code whose units are silent on another non-trivial point reads back y_∅ there: error 1
    others_exist = (~trivial).sum(0, keepdim=True) - (~trivial).long() > 0  # [T, inst]
    margin = torch.where(others_exist, 1.0, math.inf).expand(T, inst).clone()
    on = (A != 0) & ~trivial[..., None]  # [T, inst, K]
    owners = found.any(-1).nonzero().flatten()
    group = max(1, _PAIRS // T)
    for a in range(0, len(owners), group):
        js = owners[a : a + group]
        # (code j, point p) pairs where the code's units do anything on p (elsewhere: y_∅)
        live = (on[None] & code[js][:, None]).any(-1) & found[js][:, None]  # [g, T, inst]
        live[torch.arange(len(js)), js] = False
        gj, gp = live.any(-1).nonzero(as_tuple=True)
        if len(gj) == 0:
            continue
        e = _errors(model, hook, X[gp], code[js[gj]].float(), Y[gp], dn[gp])  # [pairs, inst]
        e = torch.where(live[gj, gp], e, torch.full_like(e, math.inf))
        best = torch.full((len(js), inst), math.inf)
        best.scatter_reduce_(0, gj[:, None].expand(-1, inst), e, "amin")
        margin[js] = torch.minimum(margin[js], best)
    return margin


@torch.no_grad()
def decompile(
    model: HookedToyModel,
    train: Tensor | Batch,
    *,
    hook: str | None = None,
    rtol: float = 0.25,
    max_code: int | None = None,
    value_threshold: float = 0.1,
) -> DictionaryResult:
    """Decompile each training point's code at ``hook`` (default: the model's representation
    hook); see the module docstring. Returns a :class:`memlens.lookup.DictionaryResult` whose
    ``method`` is ``"decompiled"``, with per point ``[inst, T]``: ``sparse_code`` (its code
    reads back the model's output within ``rtol``, specific or not), ``covered`` and
    ``read_back`` (a code that is also specific), ``code_size`` (0: none within ``max_code``
    units; None: no cap), ``read_back_error``, and ``codes`` ``[inst, T, units]`` (each code's
    units' activations, 0 off the code); one entry per covered point (its units, strongest first,
    their activations as ``weights``, the value read back through the code alone)."""
    train, hook = _check(model, train, hook, rtol, max_code)
    with _others_silenced(model):
        return _decompile(model, train, hook, rtol, max_code, value_threshold)


@contextlib.contextmanager
def _others_silenced(model):
    """Hooks attached elsewhere (e.g. other probes in the same ``memlens.probing`` block) do not
    see the decompiler's masked runs: each hook point's forward hooks are set aside for the
    duration and put back, the same objects, on exit (also after an exception)."""
    saved = [(hp, dict(hp._forward_hooks)) for hp in model.hook_dict.values()]
    for hp, _ in saved:
        hp._forward_hooks.clear()
    try:
        yield
    finally:
        for hp, hooks in saved:
            hp._forward_hooks.clear()
            hp._forward_hooks.update(hooks)


def _decompile(model, train, hook, rtol, max_code, value_threshold) -> DictionaryResult:
    X = train.inputs.detach()
    Y, acts = _run(model, hook, X)  # [T, inst, out], [T, inst, K]
    Y0, _ = _run(model, hook, X, torch.zeros_like(acts))
    A = acts.detach().cpu()
    pad = padding_mask(train).transpose(0, 1)  # [T, inst]
    A = A * ~pad[..., None]
    dn = (Y - Y0).norm(dim=-1).cpu()  # what the hook's units write, per point
    trivial = (dn <= 1e-6 + 1e-3 * dn.amax(0, keepdim=True)) | pad
    code, err = _grow(model, hook, X, A, Y, dn, ~trivial, rtol, max_code)
    found = (err <= rtol) & ~trivial
    code &= found[..., None]
    code, err = _prune(model, hook, X, Y, dn, code, found, rtol)
    margin = _specificity(model, hook, X, A, Y, dn, code, found, trivial)
    covered = found & (margin > rtol)
    return _result(
        model, train, hook, X, A, trivial, code, found, covered, err, margin, value_threshold
    )


def _result(model, train, hook, X, A, trivial, code, found, covered, err, margin, threshold):
    T, inst, _ = code.shape
    entries = []
    feats = None if train.features is None else train.features.detach().cpu()
    rows = covered.any(-1).nonzero().flatten()
    values, _ = _run(model, hook, X[rows], code[rows].float()) if len(rows) else (None, None)
    for r, j in enumerate(rows.tolist()):
        for i in covered[j].nonzero().flatten().tolist():
            ks = code[j, i].nonzero().flatten()
            ks = ks[A[j, i, ks].abs().argsort(descending=True)]  # strongest unit first
            value = values[r, i].cpu()
            entries.append(
                DictEntry(
                    instance=i,
                    slots=[f"neuron:{k}" for k in ks.tolist()],
                    key=j,
                    key_features=[] if feats is None else features_above(feats[j, i], 0.0),
                    value=[round(v, 5) for v in value.tolist()],
                    value_features=features_above(value, threshold),
                    match=float(min(1.0, margin[j, i])),
                    weights=[round(float(w), 5) for w in A[j, i, ks]],
                )
            )
    amax, slot_keys = A.max(0)  # [inst, K]
    slot_keys = torch.where(amax > 0, slot_keys, torch.full_like(slot_keys, -1))
    err = torch.where(found, err, torch.full_like(err, math.inf))
    return DictionaryResult(
        bundle_of(model).name,
        entries,
        covered=covered.T.contiguous(),
        read_back=covered.T.contiguous(),
        trivial=trivial.T.contiguous(),
        code_size=(code.sum(-1) * found).T.contiguous(),
        slot_keys=slot_keys,
        sparse_code=found.T.contiguous(),
        method="decompiled",
        hook=hook,
        read_back_error=err.T.contiguous(),
        codes=(A * code).transpose(0, 1).contiguous(),
    )
