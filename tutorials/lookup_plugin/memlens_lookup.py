"""A third-party memlens model plugin: a soft key-value lookup table.

This package is not part of memlens. It shows everything a researcher ships to make a new toy
model a first-class citizen, used by name in sweeps, reports, probes and tempering, with no edit
to memlens: a :class:`memlens.HookedToyModel`, its data recipe (a ``Task``), a dictionary reader,
and one :class:`memlens.ModelBundle` registered under the ``memlens.models`` entry-point group
(see ``pyproject.toml`` beside this file).

The model is a learned associative memory, the kind of circuit attention heads use to look
things up: each input attends over ``n_slots`` learned keys, and the output mixes their values.

    attn = softmax(β K̂ r)        (unit-norm keys K̂, a fixed sharpness β; hook_scores before
                                  the softmax, hook_attn after)
    y    = V attn + b            (hook_out)

A memorising lookup gives each training point a slot of its own (one-hot attention); the
dictionary reader reads that table straight off K and V.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import einops
import torch
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from memlens import Batch, Circuits, HookedToyModel, ModelBundle, SparseFeatures, ToyConfig
from memlens.data import EmbeddedTask
from memlens.lookup import DictEntry, DictionaryOptions, DictionaryResult, features_above
from memlens.validate import positive_int, real


@dataclass(frozen=True)
class LookupConfig(ToyConfig):
    d_model: int = 8
    n_slots: int = 32
    d_out: int = 32
    # β: how peaked attention can get on a key the input matches. Points embedded in d_model = 8
    # are correlated; β = 300 lets a key matched to one point take ≥ 0.999 of its attention, so a
    # memorising lookup really is a table (at β = 100 it fits the training set with mixtures of
    # slots instead, and half its points have no slot of their own at T = 16).
    sharpness: float = 300.0

    def validate(self) -> None:
        super().validate()
        for name in ("d_model", "n_slots", "d_out"):
            positive_int(name, getattr(self, name))
        real("sharpness", self.sharpness, 0, None, low_open=True)


class SoftLookup(HookedToyModel):
    """A soft key-value lookup with an instance axis. Hooks: hook_in, hook_scores, hook_attn,
    hook_out."""

    Config = LookupConfig
    input_dims = ("batch", "inst", "d_model")
    circuit_families = ("slot", "datum")
    representation_hook = "hook_attn"

    def __init__(
        self,
        d_model: int,
        n_slots: int,
        d_out: int,
        n_instances: int = 1,
        seed: int = 0,
        sharpness: float = 300.0,
    ):
        super().__init__(LookupConfig(n_instances, seed, d_model, n_slots, d_out, sharpness))
        s = 1 / math.sqrt(d_model)
        self.K = nn.Parameter(
            self._init_per_instance(
                (n_slots, d_model), lambda t, g: t.normal_(0, 3 * s, generator=g)
            )
        )
        self.V = nn.Parameter(
            self._init_per_instance(
                (d_out, n_slots), lambda t, g: t.normal_(0, 0.1, generator=g), 1
            )
        )
        self.b = nn.Parameter(torch.zeros(n_instances, d_out))
        self.hook_in, self.hook_scores = HookPoint(), HookPoint()
        self.hook_attn, self.hook_out = HookPoint(), HookPoint()
        self.setup()

    @property
    def d_in(self) -> int:
        return self.cfg.d_model

    @property
    def width(self) -> int:
        return max(self.cfg.n_slots, self.cfg.d_out)

    def forward(self, r: Tensor) -> Tensor:
        self.check_input(r)
        r = self.hook_in(r)
        keys = self.K / self.K.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        scores = self.hook_scores(
            self.cfg.sharpness * einops.einsum(keys, r, "inst s d, batch inst d -> batch inst s")
        )
        attn = self.hook_attn(scores.softmax(-1))
        out = einops.einsum(self.V, attn, "inst o s, batch inst s -> batch inst o") + self.b
        return self.hook_out(out)

    def per_example_loss(self, batch: Batch) -> Tensor:
        return ((self(batch.inputs) - batch.target) ** 2).sum(-1)

    def circuits(self, train: Batch) -> Circuits:
        """``slot:k``: slot k's attention on its key datum (the point it serves most at w*);
        ``datum:j``: the fraction of target j the output reproduces, ⟨y_j, t_j⟩ / ‖t_j‖²."""
        train = self.check_batch(train)
        x, tgt = train.inputs.detach(), train.target.detach()
        with torch.no_grad():
            _, cache = self.run_with_cache(x, names_filter="hook_attn")
        key = cache["hook_attn"].argmax(0)  # [inst, slots]
        norm2 = (tgt**2).sum(-1).clamp_min(1e-12)

        def readout(acts: dict[str, Tensor]) -> Tensor:
            attn, out = acts["hook_attn"], acts["hook_out"]
            idx = key.expand(*attn.shape[:-3], 1, *key.shape)
            slot = torch.gather(attn, -3, idx).squeeze(-3)  # [..., inst, slots]
            datum = ((out * tgt).sum(-1) / norm2).transpose(-1, -2)  # [..., inst, T]
            return torch.cat([slot, datum], dim=-1)

        names = [f"slot:{k}" for k in range(self.cfg.n_slots)]
        names += [f"datum:{j}" for j in range(len(train))]
        return Circuits(names=names, inputs=x, hooks=("hook_attn", "hook_out"), readout=readout)


class LookupTask(EmbeddedTask):
    """Features seen through a fixed embedding; the target is the features themselves."""

    def make_batch(self, f: Tensor, seed: int) -> Batch:
        return Batch(inputs=self.embed(f), targets=f, features=f)

    def model_kwargs(self) -> dict:
        n = self.features.n_features
        return {"d_model": self.d_model, "d_out": n, "n_instances": self.n_instances}


@torch.no_grad()
def read_dictionary(model: SoftLookup, train: Batch | None, opts: DictionaryOptions):
    """Slot = a learned key; its entry stores the training point that attends to it most. A datum
    is covered when its attention is concentrated (≥ 1 − rtol) on a slot whose key is that datum,
    and read back when that slot's value V[:, k] + b returns its target within rtol."""
    V, b = model.V.detach(), model.b.detach()
    if train is None:
        entries = [
            DictEntry(
                i,
                [f"slot:{k}"],
                None,
                [],
                V[i, :, k].tolist(),
                features_above(V[i, :, k], opts.value_threshold),
                float("nan"),
            )
            for i in range(V.shape[0])
            for k in range(V.shape[2])
        ]
        return DictionaryResult("lookup", entries)
    _, cache = model.run_with_cache(train.inputs, names_filter="hook_attn")
    A = cache["hook_attn"].transpose(0, 1)  # [inst, T, slots]
    tgt = train.target.transpose(0, 1)  # [inst, T, out]
    top, slot = A.max(-1)  # each datum's strongest slot
    key = A.argmax(1)  # [inst, slots]: each slot's key datum
    own = torch.gather(key, 1, slot) == torch.arange(A.shape[1])[None]
    trivial = tgt.norm(dim=-1) <= 1e-6
    covered = own & (top >= 1 - opts.rtol) & ~trivial
    value = torch.gather(V.transpose(1, 2), 1, slot[..., None].expand(-1, -1, V.shape[1]))
    value = value + b[:, None]  # [inst, T, out]
    err = (value - tgt).norm(dim=-1) / tgt.norm(dim=-1).clamp_min(1e-12)
    read_back = covered & (err <= opts.rtol)
    entries = [
        DictEntry(
            i,
            [f"slot:{int(slot[i, j])}"],
            j,
            features_above(train.features[j, i], 0.0) if train.features is not None else [],
            [round(v, 5) for v in value[i, j].tolist()],
            features_above(value[i, j], opts.value_threshold),
            float(top[i, j]),
        )
        for i, j in covered.nonzero().tolist()
    ]
    return DictionaryResult("lookup", entries, covered, read_back, trivial, None, key)


def _task(spec) -> LookupTask:
    feats = SparseFeatures(
        spec["n_features"],
        spec["sparsity"],
        normalize=spec["normalize"],
        data_version=spec["data_version"],
    )
    return LookupTask(feats, spec["d_model"], n_instances=1, seed=spec["embed_seed"])


BUNDLE = ModelBundle(
    model=SoftLookup,
    make_task=_task,
    task_defaults={
        "n_features": 24,
        "sparsity": 0.8,
        "normalize": True,
        "d_model": 8,
        "embed_seed": 0,
        "n_test": 256,
    },
    model_fields=("n_slots", "sharpness"),
    presets={
        # seconds: T = 8 memorises (one slot per point), T = 256 > n_slots cannot
        "smoke": {
            "grid": {"T": [8, 256], "seed": [0]},
            "task": {"n_features": 24, "sparsity": 0.8, "d_model": 8, "n_slots": 32, "n_test": 256},
            "train": {"steps": 300, "lr": 3e-2, "warmup": 10, "weight_decay": 0.0},
        },
    },
    title="soft lookup table (a third-party plugin)",
    loss_units="loss per point (squared error summed over outputs)",
    read_dictionary=read_dictionary,
)
