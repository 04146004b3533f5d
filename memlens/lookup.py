"""The memorised dictionary (lookup table) as data: entries, coverage, read-back.

Each model plugin ships its own reader (``ModelBundle.read_dictionary(model, train, options)``),
because what a *slot* is depends on the model: a neuron of an MLP block, an input direction of the
final layer, a hidden direction of the bottleneck. The readers return a :class:`DictionaryResult`;
the ``dictionary`` probe (``probes/dictionary.py``) finds the reader through the model's bundle.

Terms: an *entry* is slot(s) -> key -> value: the slot(s) that store it, the training point it
stores (its key) and the output it writes (its value). ``coverage`` is the fraction of (non-trivial)
training points with an entry of their own; ``read_back_accuracy`` the fraction whose target the
table returns without running the model.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from memlens.data import Batch
from memlens.io import jsonable
from memlens.probe import ProbeResult

__all__ = [
    "DictEntry",
    "DictionaryResult",
    "DictionaryOptions",
    "features_above",
    "padding_mask",
]


@dataclasses.dataclass(frozen=True)
class DictionaryOptions:
    """Thresholds of a dictionary reading.

    rtol: a datum is read back when the table's prediction is within ``rtol`` (relative L2) of
        what it should return. min_share: the specificity a slot needs to count as a lookup
        entry. max_code: the most neurons a datum's sparse code may use (MLP block).
        value_threshold: a value component above this decodes to an output feature.
        min_margin: the bottleneck's pattern must match its datum by this much more (cosine) than
        any other training point.
    """

    rtol: float = 0.25
    min_share: float = 0.2
    max_code: int = 8
    value_threshold: float = 0.1
    min_margin: float = 0.05

    def __post_init__(self) -> None:
        for name, lo, hi in [
            ("rtol", 0, 1),
            ("min_share", 0, 1),
            ("value_threshold", 0, float("inf")),
            ("min_margin", 0, 2),
        ]:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo < v <= hi:
                raise ValueError(f"{name} must be a number in ({lo}, {hi}], got {v!r}")
        m = self.max_code
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"max_code must be a positive int, got {m!r}")


def padding_mask(train: Batch) -> Tensor:
    """``[inst, T]`` True on padded rows (``Batch.lengths``): they are left out like zero rows."""
    mask = train.mask()
    if mask is None:
        return torch.zeros(train.inputs.shape[1], len(train), dtype=torch.bool)
    return ~mask.transpose(0, 1).bool().cpu()


@dataclasses.dataclass
class DictEntry:
    """One dictionary entry: slot(s) → key → value.

    instance: the model instance. slots: the neurons / direction that store it ("neuron:3").
    key: the training point it stores (None when read from the weights alone).
    key_features: the input features the key responds to (the datum's active features).
    value: the output it writes (a vector over output features, or a token id).
    value_features: the value decoded into output features (indices, strongest first).
    match: how specifically the slots store this key (see the module docstring), in [0, 1].
    weights: (decompiled codes) each slot's activation on the key, the coefficient of its value
        vector in the read-back; None for the weight-level readers.
    """

    instance: int
    slots: list[str]
    key: int | None
    key_features: list[int]
    value: list[float] | int
    value_features: list[int]
    match: float
    weights: list[float] | None = None


def features_above(v: Tensor, threshold: float) -> list[int]:
    """Indices of ``v`` above ``threshold``, strongest first."""
    idx = (v > threshold).nonzero().flatten()
    return idx[v[idx].argsort(descending=True)].tolist()


@dataclasses.dataclass
class DictionaryResult(ProbeResult):
    """The dictionary of every instance.

    Fields:
        model: the registered name of the model it was read from.
        entries: the entries (only covered data when a training set was given).
        covered, read_back: ``[inst, T]`` booleans per training point (None without one).
        trivial: ``[inst, T]`` points with (near) zero input or output: nothing to store; they are
            left out of both fractions.
        code_size: ``[inst, T]`` number of slots in each datum's code (0: no code within
            ``max_code``).
        sparse_code: ``[inst, T]`` (MLP) the output is reproduced by at most ``max_code`` neurons,
            specific or not (a generalising model can have sparse codes but no entries).
        slot_keys: ``[inst, slots]`` the datum each slot responds to most (-1: dead slot).
        method: ``"weights"`` (read off the weights by the model's reader) or ``"decompiled"``
            (each point's code found by ablation through ``hook``: ``probes.decompile``).
        hook: the hook a decompiled dictionary was read at (None for the weight-level readers).
        read_back_error: ``[inst, T]`` (decompiled) relative error of each point's read-back
            through its code alone against the model's own output (inf: no code found).
        codes: ``[inst, T, slots]`` (decompiled) each point's code: its units' activations on
            the point (the weights of their value vectors), 0 off the code.
    """

    model: str
    entries: list[DictEntry]
    covered: Tensor | None = None
    read_back: Tensor | None = None
    trivial: Tensor | None = None
    code_size: Tensor | None = None
    slot_keys: Tensor | None = None
    sparse_code: Tensor | None = None
    method: str = "weights"
    hook: str | None = None
    read_back_error: Tensor | None = None
    codes: Tensor | None = None

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
        how = f" (decompiled at {self.hook})" if self.method == "decompiled" else ""
        lines = [f"{self.model} dictionary{how}, {n} instance(s)"]
        if self.covered is None:
            lines.append(f"  {len(self.entries)} slots read from the weights (no training set)")
            return "\n".join(lines)
        for i in range(n):
            s = self.scalars(i)
            verdict = (
                (
                    "a lookup table"
                    if self.method == "weights"
                    else "a lookup table in distributed codes"
                )
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

    def _matrix(self, instance: int) -> tuple[Tensor, list[str], str]:
        """``(M [slots, T], slot names, colour label)`` of :meth:`plot`."""
        T = self.covered.shape[-1] if self.covered is not None else 0
        if self.codes is not None:  # decompiled: every point's code, by its units' activations
            C = self.codes[instance].T.abs()  # [units, T]
            M = C / C.amax(0, keepdim=True).clamp_min(1e-30)
            names = [f"neuron:{k}" for k in range(len(M))]
            return M, names, "activation in the point's code (÷ its largest)"
        rows = [e for e in self.entries if e.instance == instance and e.key is not None]
        names = sorted({s for e in rows for s in e.slots}, key=lambda s: (len(s), s)) or ["(none)"]
        col = {s: c for c, s in enumerate(names)}
        M = torch.zeros(len(names), max(T, 1))
        for e in rows:
            for s in e.slots:
                M[col[s], e.key] = e.match
        return M, names, "match score (specificity)"

    def plot(self, ax=None, instance: int = 0):
        """Per training point: its code (which slots store it) as a matrix, points without an
        entry marked. Returns the figure."""
        import matplotlib.pyplot as plt

        fig = ax.figure if ax is not None else plt.figure(figsize=(6.5, 4))
        ax = ax or fig.add_subplot()
        M, slot_names, label = self._matrix(instance)
        im = ax.imshow(M, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        fig.colorbar(im, ax=ax, label=label)
        if self.covered is not None:
            miss = (~self.covered[instance] & ~self.trivial[instance]).nonzero().flatten()
            ax.plot(miss, [-0.7] * len(miss), "rv", ms=4, label="no entry")
            if len(miss):
                ax.legend(fontsize=7, loc="upper right")
        s = self.scalars(instance) if self.covered is not None else {}
        how = f" decompiled at {self.hook}" if self.method == "decompiled" else ""
        ax.set(
            xlabel="training point (key)",
            ylabel="slot",
            title=f"{self.model} dictionary{how}, inst {instance}: coverage "
            f"{s.get('coverage', float('nan')):.0%}, read-back "
            f"{s.get('read_back_accuracy', float('nan')):.0%}",
        )
        if len(slot_names) <= 40:
            ax.set_yticks(range(len(slot_names)), slot_names, fontsize=6)
        return fig
