"""Read the memorised dictionary (the lookup table) off a toy model's weights.

A memorising network stores its training set as a dictionary: *slots* (neurons, or hidden
directions) whose *key* is the training point they respond to and whose *value* is the output they
write. :class:`DictionaryProbe` reads it for the three toy models (background.md §2):

* **MLP block** (``a = ReLU(W_in r + b_in)``, ``y = W_out a + b_out``): slot = neuron. Its key
  ``(W_in[k], b_in[k])`` is matched against the training inputs; its value ``W_out[:, k]`` times its
  activation is decoded into output features. When there are fewer neurons than points the
  dictionary is *superposed*: each datum is decompiled into a **sparse code**, the smallest set of
  neurons (greedily, by their contribution along the datum's output) whose values together
  reproduce the output to within ``rtol``, capped at ``max_code`` neurons.
* **Final layer** (``logits = W_U r + b_U``): slot = the training input's direction; its value is
  the token that ``W_U`` maps it to, checked against the label. The layer is linear, so a datum
  can have an entry of its own only if its input has a direction of its own among the training
  inputs: its match score is its leverage (maximal data dimensionality) D*.
* **Bottleneck** (``h = W x``, ``x' = ReLU(W_dec h + b)``): slot = the hidden direction of a
  training point; its value is the decoded output pattern there, and its key is the training input
  that this pattern matches best (cosine), which must beat the runner-up by a margin.

Given the training set, the probe names the datum each entry stores and reports ``coverage``, the
fraction of (non-zero) training points that have an entry of their own, and
``read_back_accuracy``, the fraction whose output the dictionary predicts, without running the
model. A slot counts as a lookup entry only if it is *specific*: for the MLP, its neurons spend at
least ``min_share`` of their activation over the training set on that datum; for the final layer,
D* ≥ ``min_share``; for the bottleneck, the decoded pattern names its own datum uniquely. In the
generalising regime slots serve many points, so coverage is low: the probe reports that it found
no lookup table rather than invent one.
"""

from __future__ import annotations

import dataclasses

import einops
import torch
from torch import Tensor

from memlens.data import Batch, as_batch
from memlens.hooked import HookedToyModel
from memlens.io import jsonable
from memlens.probe import Probe, ProbeResult
from memlens.train import sparse_activations

__all__ = ["DictionaryProbe", "DictionaryResult", "DictEntry", "sparse_activations"]


@dataclasses.dataclass
class DictEntry:
    """One dictionary entry: slot(s) → key → value.

    instance: the model instance. slots: the neurons / direction that store it ("neuron:3").
    key: the training point it stores (None when read from the weights alone).
    key_features: the input features the key responds to (the datum's active features).
    value: the output it writes (a vector over output features, or a token id).
    value_features: the value decoded into output features (indices, strongest first).
    match: how specifically the slots store this key (see the module docstring), in [0, 1].
    """

    instance: int
    slots: list[str]
    key: int | None
    key_features: list[int]
    value: list[float] | int
    value_features: list[int]
    match: float


def _features(v: Tensor, threshold: float) -> list[int]:
    idx = (v > threshold).nonzero().flatten()
    return idx[v[idx].argsort(descending=True)].tolist()


@dataclasses.dataclass
class DictionaryResult(ProbeResult):
    """The dictionary of every instance.

    Fields:
        model: "mlp", "unembed" or "bottleneck".
        entries: the entries (only covered data when a training set was given).
        covered, read_back: ``[inst, T]`` booleans per training point (None without one).
        trivial: ``[inst, T]`` points with (near) zero input or output: nothing to store; they are
            left out of both fractions.
        code_size: ``[inst, T]`` number of slots in each datum's code (0: no code within
            ``max_code``).
        sparse_code: ``[inst, T]`` (MLP) the output is reproduced by at most ``max_code`` neurons,
            specific or not (a generalising model can have sparse codes but no entries).
        slot_keys: ``[inst, slots]`` the datum each slot responds to most (-1: dead slot).
    """

    model: str
    entries: list[DictEntry]
    covered: Tensor | None = None
    read_back: Tensor | None = None
    trivial: Tensor | None = None
    code_size: Tensor | None = None
    slot_keys: Tensor | None = None
    sparse_code: Tensor | None = None

    @property
    def n_instances(self) -> int:
        return 1 + max((e.instance for e in self.entries), default=0)

    def _frac(self, t: Tensor | None) -> Tensor:
        if t is None:
            return torch.full((1,), float("nan"))
        keep = ~self.trivial
        return (t & keep).sum(-1).float() / keep.sum(-1).clamp_min(1).float()

    def instance_scalars(self) -> dict[str, Tensor]:
        """``{name: [inst]}``: coverage, read_back_accuracy, n_entries."""
        cov = self._frac(self.covered)
        counts = torch.zeros(len(cov))
        for e in self.entries:
            if e.instance < len(counts):
                counts[e.instance] += 1
        out = {
            "coverage": cov,
            "read_back_accuracy": self._frac(self.read_back),
            "n_entries": counts,
        }
        if self.sparse_code is not None:
            out["sparse_code_fraction"] = self._frac(self.sparse_code)
        if self.code_size is not None:
            ok = (self.code_size > 0) & ~self.trivial
            out["mean_code_size"] = (self.code_size * ok).sum(-1).float() / ok.sum(-1).clamp_min(
                1
            ).float()
        return out

    @property
    def coverage(self) -> float:
        return float(self.instance_scalars()["coverage"].mean())

    @property
    def read_back_accuracy(self) -> float:
        return float(self.instance_scalars()["read_back_accuracy"].mean())

    def scalars(self, instance: int | None = None) -> dict[str, float]:
        per = self.instance_scalars()
        if instance is not None:
            return {k: float(v[instance]) for k, v in per.items()}
        return {k: float(v.mean()) for k, v in per.items()}

    def to_dict(self) -> dict:
        d = jsonable(self)
        d["scalars"] = self.scalars()
        return d

    def to_table(self, instance: int = 0, max_rows: int = 20) -> str:
        """The dictionary of one instance as a text table."""
        rows = [e for e in self.entries if e.instance == instance]
        lines = [f"{'key':>5}  {'slots':<24} {'key features':<18} {'value':<22} {'match':>5}"]
        for e in rows[:max_rows]:
            val = (
                f"token {e.value}"
                if isinstance(e.value, int)
                else "feat " + ",".join(map(str, e.value_features[:6]))
            )
            slots = ",".join(s.split(":")[-1] for s in e.slots)
            kind = e.slots[0].split(":")[0] if e.slots else ""
            lines.append(
                f"{'-' if e.key is None else e.key:>5}  {(kind + ' ' + slots)[:24]:<24} "
                f"{','.join(map(str, e.key_features[:6]))[:18]:<18} {val[:22]:<22} {e.match:5.2f}"
            )
        if len(rows) > max_rows:
            lines.append(f"... {len(rows) - max_rows} more entries")
        return "\n".join(lines)

    def summary(self) -> str:
        n = self.covered.shape[0] if self.covered is not None else self.n_instances
        lines = [f"{self.model} dictionary, {n} instance(s)"]
        if self.covered is None:
            lines.append(f"  {len(self.entries)} slots read from the weights (no training set)")
            return "\n".join(lines)
        for i in range(n):
            s = self.scalars(i)
            verdict = (
                "a lookup table"
                if s["coverage"] >= 0.5
                else "no lookup table found (the model is not memorising point by point)"
            )
            line = (
                f"  inst {i}: {int(s['n_entries'])} entries, coverage {s['coverage']:.0%}, "
                f"read-back {s['read_back_accuracy']:.0%}"
            )
            if "mean_code_size" in s:
                line += f", mean code size {s['mean_code_size']:.2f} slots"
            lines.append(line + f": {verdict}")
        return "\n".join(lines)

    def plot(self, ax=None, instance: int = 0):
        """Per training point: its code (which slots store it) as a matrix, covered points marked.
        Returns the figure."""
        import matplotlib.pyplot as plt

        fig = ax.figure if ax is not None else plt.figure(figsize=(6.5, 4))
        ax = ax or fig.add_subplot()
        rows = [e for e in self.entries if e.instance == instance and e.key is not None]
        T = self.covered.shape[-1] if self.covered is not None else 0
        slot_names = sorted({s for e in rows for s in e.slots}, key=lambda s: (len(s), s)) or [
            "(none)"
        ]
        col = {s: c for c, s in enumerate(slot_names)}
        M = torch.zeros(len(slot_names), max(T, 1))
        for e in rows:
            for s in e.slots:
                M[col[s], e.key] = e.match
        im = ax.imshow(M, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        fig.colorbar(im, ax=ax, label="match score (specificity)")
        if self.covered is not None:
            miss = (~self.covered[instance] & ~self.trivial[instance]).nonzero().flatten()
            ax.plot(miss, [-0.7] * len(miss), "rv", ms=4, label="no entry")
            if len(miss):
                ax.legend(fontsize=7, loc="upper right")
        s = self.scalars(instance) if self.covered is not None else {}
        ax.set(
            xlabel="training point (key)",
            ylabel="slot",
            title=f"{self.model} dictionary, inst {instance}: coverage "
            f"{s.get('coverage', float('nan')):.0%}, read-back "
            f"{s.get('read_back_accuracy', float('nan')):.0%}",
        )
        if len(slot_names) <= 40:
            ax.set_yticks(range(len(slot_names)), slot_names, fontsize=6)
        return fig


class DictionaryProbe(Probe):
    """Reads the memorised dictionary from the weights (no forward pass needed).

    Args:
        train: the training set (a ``Batch``; for the MLP block and the final layer it must hold
            the targets). Needed to name data and to report coverage and read-back.
        rtol: a datum is read back when the dictionary's prediction is within ``rtol`` (relative
            L2) of the model's output (MLP, bottleneck) or names the model's token (final layer).
        min_share: specificity a slot needs to count as a lookup entry (see module docstring).
        max_code: most neurons a datum's sparse code may use (MLP block).
        value_threshold: a value component above this decodes to an output feature.
        min_margin: the bottleneck's pattern must match its datum by this much more (cosine) than
            any other training point.
    """

    hooks = ()

    def __init__(
        self,
        train: Tensor | Batch | None = None,
        rtol: float = 0.25,
        min_share: float = 0.2,
        max_code: int = 8,
        value_threshold: float = 0.1,
        min_margin: float = 0.05,
    ):
        for name, v, lo, hi in [
            ("rtol", rtol, 0, 1),
            ("min_share", min_share, 0, 1),
            ("value_threshold", value_threshold, 0, float("inf")),
            ("min_margin", min_margin, 0, 2),
        ]:
            if not isinstance(v, (int, float)) or not lo < v <= hi:
                raise ValueError(f"{name} must be in ({lo}, {hi}], got {v!r}")
        if isinstance(max_code, bool) or not isinstance(max_code, int) or max_code < 1:
            raise ValueError(f"max_code must be a positive int, got {max_code!r}")
        super().__init__(train=None if train is None else as_batch(train))
        self.rtol, self.min_share, self.max_code = float(rtol), float(min_share), max_code
        self.value_threshold, self.min_margin = float(value_threshold), float(min_margin)

    def result(self) -> DictionaryResult:
        if self.model is None:
            raise ValueError("DictionaryProbe is not attached: use memlens.probing() or run()")
        return self.read(self.model)

    @torch.no_grad()
    def read(self, model: HookedToyModel) -> DictionaryResult:
        self.model = model
        train = None if self.train is None else model.check_batch(self.train)
        kind = _kind(model)
        if kind == "mlp":
            return self._mlp(model, train)
        if kind == "unembed":
            return self._unembed(model, train)
        return self._bottleneck(model, train)

    # ------------------------------------------------------------------ MLP block
    def _mlp(self, model, train: Batch | None) -> DictionaryResult:
        W_in, b_in = model.W_in.detach(), model.b_in.detach()  # [inst, K, d], [inst, K]
        W_out, b_out = model.W_out.detach(), model.b_out.detach()  # [inst, O, K], [inst, O]
        inst, K = b_in.shape
        if train is None:
            entries = [
                DictEntry(
                    i,
                    [f"neuron:{k}"],
                    None,
                    [],
                    W_out[i, :, k].tolist(),
                    _features(W_out[i, :, k], self.value_threshold),
                    float("nan"),
                )
                for i in range(inst)
                for k in range(K)
                if W_out[i, :, k].norm() > 0
            ]
            return DictionaryResult("mlp", entries)
        R = train.inputs.transpose(0, 1)  # [inst, T, d]
        A = torch.relu(einops.einsum(R, W_in, "inst t d, inst k d -> inst t k") + b_in[:, None])
        A = A * ~_padding(train).to(A.device)[..., None]  # padded rows store nothing
        C = A[:, :, None, :] * W_out[:, None]  # [inst, T, O, K] each neuron's write
        delta = C.sum(-1)  # model output minus b_out
        dn = delta.norm(dim=-1)  # [inst, T]
        trivial = (dn <= 1e-6 + 1e-3 * dn.amax(-1, keepdim=True)) | _padding(train)
        proj = (C * delta[..., None]).sum(2) / (dn**2).clamp_min(1e-30)[..., None]
        order = proj.argsort(-1, descending=True)  # [inst, T, K]
        L = min(self.max_code, K)
        top = order[..., :L]
        Cs = torch.gather(C, 3, top[:, :, None, :].expand(-1, -1, C.shape[2], -1))
        cum = Cs.cumsum(-1)  # [inst, T, O, L]
        res = (cum - delta[..., None]).norm(dim=2) / dn.clamp_min(1e-30)[..., None]
        ok = res <= self.rtol
        found = ok.any(-1) & ~trivial
        code = torch.where(found, ok.float().argmax(-1) + 1, torch.zeros_like(dn).long())
        # specificity: the share of the code neurons' activation (over the set) spent on j; a
        # datum without a code within max_code is judged on its max_code strongest neurons
        size = torch.where(found, code, torch.full_like(code, L))
        used = torch.arange(L)[None, None, :] < size[..., None]  # [inst, T, L]
        a_own = torch.gather(A, 2, top) * used
        a_all = torch.gather(A.sum(1, keepdim=True).expand(-1, A.shape[1], -1), 2, top) * used
        share = a_own.sum(-1) / a_all.sum(-1).clamp_min(1e-30)
        covered = (share >= self.min_share) & ~trivial
        read_back = covered & found
        amax, slot_keys = A.max(1)  # [inst, K]
        slot_keys = torch.where(amax > 0, slot_keys, torch.full_like(slot_keys, -1))
        entries = []
        feats = None if train.features is None else train.features.transpose(0, 1)
        for i, j in covered.nonzero().tolist():
            c = int(size[i, j])
            pred = b_out[i] + cum[i, j, :, c - 1]
            entries.append(
                DictEntry(
                    instance=i,
                    slots=[f"neuron:{k}" for k in top[i, j, :c].tolist()],
                    key=j,
                    key_features=[] if feats is None else _features(feats[i, j], 0.0),
                    value=[round(v, 5) for v in pred.tolist()],
                    value_features=_features(pred, self.value_threshold),
                    match=float(share[i, j]),
                )
            )
        return DictionaryResult(
            "mlp",
            entries,
            covered.cpu(),
            read_back.cpu(),
            trivial.cpu(),
            code.cpu(),
            slot_keys.cpu(),
            sparse_code=found.cpu(),
        )

    # ------------------------------------------------------------------ final layer
    def _unembed(self, model, train: Batch | None) -> DictionaryResult:
        W_U, b_U = model.W_U.detach(), model.b_U.detach()  # [inst, V, d], [inst, V]
        inst = W_U.shape[0]
        if train is None:
            entries = [
                DictEntry(i, [f"token:{v}"], None, [], v, [v], float("nan"))
                for i in range(inst)
                for v in range(W_U.shape[1])
            ]
            return DictionaryResult("unembed", entries)
        from probes.dimensionality import max_data_dimensionality

        R = train.inputs.transpose(0, 1) * ~_padding(train).to(W_U.device)[..., None]
        logits = einops.einsum(R, W_U, "inst t d, inst v d -> inst t v") + b_U[:, None]
        token = logits.argmax(-1)
        labels = train.targets.transpose(0, 1)
        trivial = (R.norm(dim=-1) <= 1e-6) | _padding(train)
        dstar = max_data_dimensionality(R)
        # the dictionary's token for j is read from W_U along j's own direction; it predicts the
        # model (read back) when it is the label the model was trained on and the model agrees
        covered = (dstar >= self.min_share) & (token == labels) & ~trivial
        read_back = covered.clone()
        feats = None if train.features is None else train.features.transpose(0, 1)
        entries = [
            DictEntry(
                instance=i,
                slots=[f"input:{j}"],
                key=j,
                key_features=[] if feats is None else _features(feats[i, j], 0.0),
                value=int(token[i, j]),
                value_features=[int(token[i, j])],
                match=float(dstar[i, j].clamp(0, 1)),
            )
            for i, j in covered.nonzero().tolist()
        ]
        return DictionaryResult("unembed", entries, covered.cpu(), read_back.cpu(), trivial.cpu())

    # ------------------------------------------------------------------ bottleneck
    def _bottleneck(self, model, train: Batch | None) -> DictionaryResult:
        W, b = model.W.detach(), model.b.detach()  # [inst, m, n], [inst, n]
        dec = model.decoder.detach()  # [inst, n, m]
        if train is None:
            cols = W.transpose(1, 2)  # feature directions as slots
            out = torch.relu(
                einops.einsum(dec, cols, "inst n m, inst f m -> inst f n") + b[:, None]
            )
            entries = [
                DictEntry(
                    i,
                    [f"direction:feature{f}"],
                    None,
                    [f],
                    out[i, f].tolist(),
                    _features(out[i, f], self.value_threshold),
                    float("nan"),
                )
                for i in range(W.shape[0])
                for f in range(W.shape[2])
                if W[i, :, f].norm() > 0
            ]
            return DictionaryResult("bottleneck", entries)
        X = train.inputs.transpose(0, 1) * ~_padding(train).to(W.device)[..., None]
        H = einops.einsum(X, W, "inst t n, inst m n -> inst t m")
        out = torch.relu(einops.einsum(H, dec, "inst t m, inst n m -> inst t n") + b[:, None])
        xn = X / X.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        on = out / out.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        cos = einops.einsum(on, xn, "inst s n, inst t n -> inst s t")  # slot s vs datum t
        trivial = (X.norm(dim=-1) <= 1e-6) | (H.norm(dim=-1) <= 1e-6) | _padding(train)
        cos = cos.masked_fill(trivial[:, None, :], -1.0)
        best = cos.topk(min(2, cos.shape[-1]), dim=-1)
        named = best.indices[..., 0]
        match = best.values[..., 0]
        runner = best.values[..., 1] if cos.shape[-1] > 1 else torch.full_like(match, -1.0)
        T = X.shape[1]
        own = named == torch.arange(T)[None]
        specific = (match >= 1 - self.rtol) & (match - runner >= self.min_margin) & ~trivial
        covered = own & specific
        # read back: datum j's output predicted as the value of the entry whose key names j
        err = (out - out).norm(dim=-1)  # the entry of slot j is read at h_j itself: exact value
        read_back = covered & (err <= self.rtol * out.norm(dim=-1).clamp_min(1e-12))
        feats = X
        entries = [
            DictEntry(
                instance=i,
                slots=[f"direction:{j}"],
                key=int(named[i, j]),
                key_features=_features(feats[i, j], 0.0),
                value=[round(v, 5) for v in out[i, j].tolist()],
                value_features=_features(out[i, j], self.value_threshold),
                match=float(match[i, j]),
            )
            for i, j in specific.nonzero().tolist()
        ]
        slot_keys = torch.where(specific, named, torch.full_like(named, -1))
        return DictionaryResult(
            "bottleneck",
            entries,
            covered.cpu(),
            read_back.cpu(),
            trivial.cpu(),
            None,
            slot_keys.cpu(),
        )


def _padding(train: Batch) -> Tensor:
    """``[inst, T]`` True on padded rows (``Batch.lengths``): they are left out like zero rows."""
    mask = train.mask()
    if mask is None:
        return torch.zeros(train.inputs.shape[1], len(train), dtype=torch.bool)
    return ~mask.transpose(0, 1).bool().cpu()


def _kind(model: HookedToyModel) -> str:
    if all(hasattr(model, a) for a in ("W_in", "W_out", "b_in", "b_out")):
        return "mlp"
    if hasattr(model, "W_U"):
        return "unembed"
    if hasattr(model, "W") and hasattr(model, "decoder"):
        return "bottleneck"
    raise ValueError(
        f"DictionaryProbe reads MLPBlock, Unembed and Bottleneck models (weights W_in/W_out, "
        f"W_U, or W + decoder); {type(model).__name__} has none of these"
    )
