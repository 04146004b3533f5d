"""Reading the fact transformer: which MLP neurons store which fact, ablating them, and how many
facts a model of a given size stores (which facts look memorised: the ``memorised`` probe).

* :func:`neuron_attribution`: each MLP neuron's direct contribution to each training fact's margin
  (its object's logit minus the runner-up object's) at the last position, ``a_k (W_out[:, k] ·
  (W_U[y] - W_U[y']))``. Exact for the last layer's neurons of a model without normalisation (the
  MLP output goes straight to the unembedding); the direct path only for earlier layers.
* :func:`read_dictionary` (the bundle's reader, for the ``dictionary`` probe): a fact's *slots*
  are neurons specific to it whose summed contribution exceeds its margin, so removing them erases
  the fact (directly); a fact whose slots number at most ``max_code`` is an entry.
* :func:`ablate`: the logits with chosen neurons silenced at every position (a real forward pass).
* :func:`capacity`: facts stored (argmax right) and bits stored by models trained on random facts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

import memlens
from memlens.data import Batch
from memlens.lookup import DictEntry, DictionaryOptions, DictionaryResult
from toy_models.facts import FactTask, FactTransformer

__all__ = [
    "neuron_attribution",
    "read_dictionary",
    "ablate",
    "accuracy",
    "capacity",
    "plot_capacity",
]


def _objects(model: FactTransformer, logits: Tensor) -> Tensor:
    return logits[..., model.object_offset : model.cfg.d_vocab]


@torch.no_grad()
def neuron_attribution(model: FactTransformer, train: Batch) -> tuple[Tensor, Tensor, Tensor]:
    """``(contrib [inst, T, K], margin [inst, T], act [inst, T, K])`` (K = n_layers x d_mlp):
    each neuron's direct contribution to each fact's margin against its runner-up object, the
    margin itself, and the neurons' activations at the last position."""
    train = model.check_batch(train)
    hooks = model.neuron_hooks()
    logits, cache = model.run_with_cache(train.inputs, names_filter=hooks)
    obj = _objects(model, logits[:, :, -1])  # [T, inst, O]
    y = train.targets - model.object_offset
    right = obj.gather(-1, y[..., None])[..., 0]
    runner = obj.scatter(-1, y[..., None], float("-inf")).argmax(-1)
    margin = right - obj.gather(-1, runner[..., None])[..., 0]
    W_U = model.stacked_parameters()["head._original_component.weight"]  # [inst, vocab, d_model]
    off = model.object_offset
    diff = torch.stack(
        [W_U[i, off + y[:, i]] - W_U[i, off + runner[:, i]] for i in range(model.n_instances)]
    )  # [inst, T, d_model]
    parts, acts = [], []
    params = model.stacked_parameters()
    for layer, h in enumerate(hooks):
        W_out = params[f"layers.{layer}._original_component.mlp._original_component.fc_out"
                       "._original_component.weight"]  # [inst, d_model, d_mlp]  # fmt: skip
        a = cache[h][:, :, -1].transpose(0, 1)  # [inst, T, d_mlp]
        acts.append(a)
        parts.append(a * torch.einsum("itd,idk->itk", diff, W_out))
    return torch.cat(parts, -1), margin.transpose(0, 1), torch.cat(acts, -1)


@torch.no_grad()
def read_dictionary(
    model: FactTransformer, train: Batch | None, opts: DictionaryOptions
) -> DictionaryResult:
    """Slots of fact j: neurons taken in order of ``c_jk s_jk²``, their contribution ``c_jk`` to
    j's margin times the square of their specificity to j (``s_jk``: the share of neuron k's
    whole direct influence on the training margins, ``Σ_t |c_tk|``, that goes to j), until their
    contributions sum past j's margin, so silencing them erases it; an entry when there are at
    most ``max_code`` of them and the fact is right at w*. ``read_back``: the entry's value is
    the fact's object. Specificity first: a neuron that also writes the rule for many facts is
    left out when a fact-specific one does the job, so silencing a fact's slots spares the
    others."""
    if train is None:
        raise ValueError("the fact transformer's dictionary is read on its training facts")
    contrib, margin, act = neuron_attribution(model, train)
    pos = contrib.clamp_min(0)
    share = pos / contrib.abs().sum(1, keepdim=True).clamp_min(1e-12)  # of k's whole influence
    rank = (pos * share**2).argsort(-1, descending=True)
    ordered = contrib.gather(-1, rank)
    csum = ordered.clamp_min(0).cumsum(-1)
    need = (csum < margin[..., None]).sum(-1) + 1  # neurons until the sum passes the margin
    right = margin > 0
    covered = right & (need <= opts.max_code) & (csum[..., -1] >= margin)
    d_mlp = model.cfg.d_mlp
    entries = []
    for i, j in covered.nonzero().tolist():
        ks = rank[i, j, : int(need[i, j])].tolist()
        spec = float(share[i, j, ks].mean())
        entries.append(
            DictEntry(
                instance=i,
                slots=[f"neuron:{k // d_mlp}.{k % d_mlp}" for k in ks],
                key=j,
                key_features=train.inputs[j, i].tolist(),
                value=int(train.targets[j, i]),
                value_features=[],
                match=max(0.0, min(1.0, spec)),
            )
        )
    code = torch.where(covered, need, torch.zeros_like(need))
    slot_keys = contrib.argmax(1)  # [inst, K]: the fact each neuron serves most
    return DictionaryResult(
        "facts",
        entries,
        covered.cpu(),
        covered.cpu(),
        torch.zeros_like(covered).cpu(),
        code.cpu(),
        slot_keys.cpu(),
    )


def slots_of(result: DictionaryResult, instance: int, fact: int) -> list[tuple[int, int]]:
    """``[(layer, neuron)]`` that store training fact ``fact`` of ``instance`` (empty: none)."""
    for e in result.entries:
        if e.instance == instance and e.key == fact:
            return [tuple(int(v) for v in s.split(":")[1].split(".")) for s in e.slots]
    return []


@torch.no_grad()
def ablate(
    model: FactTransformer, instance: int, inputs: Tensor, neurons: Sequence[tuple[int, int]]
) -> Tensor:
    """Instance ``instance``'s logits ``[batch, 2, vocab]`` on ``inputs [batch, 2]`` with the
    ``(layer, neuron)`` s silenced at every position."""
    by_layer: dict[int, list[int]] = {}
    for layer, k in neurons:
        by_layer.setdefault(int(layer), []).append(int(k))

    def silence(ks: list[int]):
        def fn(act: Tensor, hook=None) -> Tensor:
            act = act.clone()
            act[..., ks] = 0.0
            return act

        return fn

    hooks = [(f"blocks.{layer}.mlp.hook_post", silence(ks)) for layer, ks in by_layer.items()]
    return model.run_instance(instance, inputs, hooks)


def accuracy(model: FactTransformer, logits: Tensor, targets: Tensor) -> Tensor:
    """Whether the object with the highest logit at the last position is the target."""
    return _objects(model, logits[..., -1, :]).argmax(-1) == targets - model.object_offset


def capacity(
    sizes: Sequence[tuple[int, int]],
    *,
    T: int = 500,
    steps: int = 1500,
    seeds: int = 2,
    lr: float = 1e-2,
    task: dict | None = None,
) -> list[dict]:
    """Facts stored against parameters: for each ``(d_model, d_mlp)``, ``seeds`` one-head models
    (instances of one) trained on ``T`` facts that are all random (``n_planted = T``: nothing to
    generalise; by default 32 subjects x 16 relations, 16 objects, so 4 bits a fact), and the
    number they store (argmax right), its bits and bits per parameter."""
    spec = {
        "n_subjects": 32,
        "n_relations": 16,
        "n_objects": 16,
        "n_classes": 4,
        "n_planted": T,
        "n_test": 1,
    } | (task or {})
    train, _ = FactTask(spec, n_instances=seeds).split(T, seed=0)
    rows = []
    for d_model, d_mlp in sizes:
        model = FactTransformer(
            **{k: spec[k] for k in ("n_subjects", "n_relations", "n_objects")},
            d_model=d_model,
            n_heads=1,
            d_mlp=d_mlp,
            n_instances=seeds,
        )
        memlens.train(model, train, steps=steps, lr=lr, warmup=50, progress=False)
        with torch.no_grad():
            stored = accuracy(model, model(train.inputs), train.targets).sum(0).float()
        n_params = sum(p[0].numel() for p in model.parameters())
        bits = stored * math.log2(spec["n_objects"])
        rows.append(
            {
                "d_model": d_model,
                "d_mlp": d_mlp,
                "params": n_params,
                "facts_stored": stored.tolist(),
                "bits": bits.tolist(),
                "bits_per_param": (bits / n_params).tolist(),
            }
        )
    return rows


def plot_capacity(rows: list[dict], ax=None, *, T: int = 500, n_objects: int = 16):
    """Bits of facts stored against parameters (:func:`capacity`'s rows, mean over seeds), with
    2 bits per parameter (Allen-Zhu & Li), all ``T`` facts and chance as references."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.6))
    P = [r["params"] for r in rows]
    bits = math.log2(n_objects)
    ax.plot(
        P, [sum(r["bits"]) / len(r["bits"]) for r in rows], "o-", label="bits stored (measured)"
    )
    ax.plot(P, [2 * p for p in P], "k--", lw=1, label="2 bits / parameter (Allen-Zhu & Li)")
    ax.axhline(T * bits, c="gray", lw=1, ls=":", label=f"all {T} facts ({T * bits:.0f} bits)")
    ax.axhline(T / n_objects * bits, c="gray", lw=1, ls="-.",
               label=f"chance (≈ {T / n_objects:.0f} facts)")  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="parameters", ylabel="bits of facts stored",
           title="fact capacity of a one-layer transformer")  # fmt: skip
    ax.legend(fontsize=8)
    return ax
