"""The final layer: residual stream into vocabulary logits.

    logits = W_U r + b_U           (hook_logits)

Loss: cross-entropy against a token label, averaged over the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import einops
import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from memlens.bundle import ModelBundle
from memlens.data import Batch, EmbeddedTask, SparseFeatures, instance_generators
from memlens.fused import DerivedCache, blocks, gather_instance_major, instance_major, row_counts
from memlens.hooked import Circuits, HookedToyModel, ToyConfig, check_positive_int
from memlens.lookup import (
    DictEntry,
    DictionaryOptions,
    DictionaryResult,
    features_above,
    padding_mask,
)

_inputs, _targets = DerivedCache(), DerivedCache()  # instance-major copies of a training set


@dataclass(frozen=True)
class UnembedConfig(ToyConfig):
    d_model: int = 4
    d_vocab: int = 8

    def validate(self) -> None:
        super().validate()
        check_positive_int("d_model", self.d_model)
        check_positive_int("d_vocab", self.d_vocab)
        if self.d_vocab < 2:
            raise ValueError(f"d_vocab must be at least 2, got {self.d_vocab}")


class Unembed(HookedToyModel):
    """An unembedding with an instance axis. Hooks: hook_in, hook_logits."""

    Config = UnembedConfig
    input_dims = ("batch", "inst", "d_model")
    circuit_families = ("datum",)
    representation_hook = "hook_logits"

    def __init__(self, d_model: int, d_vocab: int, n_instances: int = 1, seed: int = 0):
        cfg = UnembedConfig(n_instances=n_instances, seed=seed, d_model=d_model, d_vocab=d_vocab)
        super().__init__(cfg)
        s = 1 / math.sqrt(d_model)
        self.W_U = nn.Parameter(
            self._init_per_instance((d_vocab, d_model), lambda t, g: t.normal_(0, s, generator=g))
        )
        self.b_U = nn.Parameter(torch.zeros(n_instances, d_vocab))
        self.hook_in = HookPoint()
        self.hook_logits = HookPoint()
        self.setup()

    @property
    def width(self) -> int:
        return self.cfg.d_vocab

    @property
    def d_in(self) -> int:
        return self.cfg.d_model

    def forward(self, r: Float[Tensor, "batch inst d_model"]) -> Float[Tensor, "batch inst vocab"]:
        self.check_input(r)
        r = self.hook_in(r)
        return self.hook_logits(
            einops.einsum(self.W_U, r, "inst v d, batch inst d -> batch inst v") + self.b_U
        )

    def per_example_loss(self, batch: Batch) -> Float[Tensor, "batch inst"]:
        logits = self(batch.inputs)
        return F.cross_entropy(
            logits.flatten(0, 1), batch.targets.flatten(), reduction="none"
        ).view(logits.shape[:2])

    def fused_loss_and_grads(self, batch: Batch, rows: Tensor | None = None):
        """Cross-entropy losses and hand-derived gradients without autograd, for
        ``memlens.train``: the C++ kernel of :mod:`toy_models.unembed_kernel`, or without a
        compiler the same maths in torch, on instance-major copies of the data in blocks of
        about 2**19 logits:

            z = r W_Uᵀ + b_U,  loss = Σ (logsumexp z - z_y) / N,
            g = softmax(z) - onehot(y)  (0 on padded rows),  gW_U = gᵀ r / N,  gb_U = Σ g / N
        """
        from toy_models import unembed_kernel

        r, y = batch.inputs, batch.targets
        if r.device.type != "cpu" or r.dtype != torch.float32:
            return None
        if rows is None:
            rI, yI = instance_major(r, _inputs), instance_major(y, _targets)
            counts = None if batch.lengths is None else row_counts(batch)
        else:
            rI = gather_instance_major(instance_major(r, _inputs), rows)
            yI = gather_instance_major(y.t(), rows).contiguous()
            counts = None
        full = counts if counts is not None else torch.full((rI.shape[0],), rI.shape[1])
        out = unembed_kernel.loss_and_grads(rI, yI, full, self.W_U, self.b_U)
        return out if out is not None else self._blocked_step(rI, yI, counts)

    def _blocked_step(self, rI: Tensor, yI: Tensor, counts: Tensor | None):
        """The fused step's maths in torch ops, in blocks (used when no kernel is available)."""
        inst, T = rI.shape[:2]
        W_U, b_U = self.W_U.detach(), self.b_U.detach()
        g_W, g_b = torch.zeros_like(W_U), torch.zeros_like(b_U)
        loss = torch.zeros(inst, dtype=torch.float64)
        for si, sr in blocks(inst, T, self.cfg.d_vocab):
            rc, yc = rI[si, sr], yI[si, sr].long()[..., None]
            z = torch.baddbmm(b_U[si, None], rc, W_U[si].transpose(1, 2))
            top = z.amax(-1, keepdim=True)
            z_y = z.gather(-1, yc)
            e = z.sub_(top).exp_()  # one exp per logit: softmax and logsumexp share it
            total = e.sum(-1, keepdim=True)
            per = (total.log() + top - z_y).squeeze(-1)
            g = e.div_(total).scatter_add_(-1, yc, torch.full(yc.shape, -1.0))
            if counts is not None:
                keep = torch.arange(sr.start, sr.stop)[None, :] < counts[si, None]
                per = per * keep
                g.mul_(keep[..., None])
            loss[si] += per.sum(1).double()
            g_W[si].baddbmm_(g.transpose(1, 2), rc)
            g_b[si] += g.sum(1)
        n = torch.full((inst,), float(T)) if counts is None else counts.clamp_min(1).float()
        s = 1.0 / n
        return (loss / n.double()).float(), {
            "W_U": g_W.mul_(s[:, None, None]),
            "b_U": g_b.mul_(s[:, None]),
        }

    def _check_targets(self, batch: Batch) -> None:
        y = batch.targets
        if y is None or y.dtype not in (torch.long, torch.int64, torch.int32):
            raise ValueError(
                "Unembed needs integer token targets [batch, inst] (a Batch with "
                "targets), e.g. from toy_models.UnembedTask"
            )
        if tuple(y.shape) != tuple(batch.inputs.shape[:2]):
            raise ValueError(
                f"Unembed targets must have shape [batch, inst] = "
                f"{tuple(batch.inputs.shape[:2])}, got {tuple(y.shape)}"
            )
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.cfg.d_vocab):
            raise ValueError(f"token targets must be in [0, d_vocab={self.cfg.d_vocab})")

    def circuits(self, train: Batch) -> Circuits:
        """``datum:j`` is the label's logit margin on training point j: its logit minus the
        largest other logit."""
        train = self.check_batch(train)
        y = train.targets.long()

        def readout(acts: dict[str, Tensor]) -> Tensor:
            logits = acts["hook_logits"]
            idx = y.expand(*logits.shape[:-1]).unsqueeze(-1)
            own = torch.gather(logits, -1, idx).squeeze(-1)
            other = logits.scatter(-1, idx, float("-inf")).amax(-1)
            return (own - other).transpose(-1, -2)  # [..., inst, T]

        names = [f"datum:{j}" for j in range(len(train))]
        T = len(train)  # ablating datum j zeroes its residual input at hook_in
        mask = torch.ones(T, T, self.n_instances, self.cfg.d_model, device=y.device)
        mask[torch.arange(T), torch.arange(T)] = 0
        inputs = train.inputs.detach()
        return Circuits(names, inputs, ("hook_logits",), readout, {"hook_in": mask})


class UnembedTask(EmbeddedTask):
    """Residual input r = E f into an unembedding; the target is a token.

    ``labels="rule"``: the index of the largest active feature (token ``n_features`` when no
    feature is active), a rule a model can generalise. ``labels="random"``: uniform random tokens,
    which can only be memorised. The vocabulary has ``n_features + 1`` tokens.
    """

    LABELS = ("rule", "random")

    def __init__(
        self,
        features: SparseFeatures,
        d_model: int,
        n_instances: int | None = None,
        seed: int = 0,
        labels: str = "rule",
    ):
        super().__init__(features, d_model, n_instances, seed)
        if labels not in self.LABELS:
            raise ValueError(f"labels must be one of {self.LABELS}, got {labels!r}")
        self.labels = labels

    @property
    def d_vocab(self) -> int:
        return self.features.n_features + 1

    def rule(self, f: Tensor) -> Tensor:
        top = f.argmax(dim=-1)
        return torch.where(f.amax(dim=-1) > 0, top, torch.full_like(top, self.features.n_features))

    def make_batch(self, f: Tensor, seed: int) -> Batch:
        if self.labels == "rule":
            y = self.rule(f)
        else:
            gens = instance_generators(seed, self.n_instances, 9)
            y = torch.stack(
                [torch.randint(self.d_vocab, (f.shape[0],), generator=g) for g in gens], dim=1
            )
        return Batch(inputs=self.embed(f), targets=y, features=f)

    def model_kwargs(self) -> dict:
        return {"d_model": self.d_model, "d_vocab": self.d_vocab, "n_instances": self.n_instances}


NAME = "unembed"


def _leverage(R: Tensor) -> Tensor:
    """``[inst, T]`` leverage scores r_jᵀ (RᵀR)⁺ r_j of the rows of ``R`` ``[inst, T, d]``."""
    Rd = R.double()
    G = Rd.transpose(1, 2) @ Rd
    # singular values of R below 10·d·eps(R's dtype)·σ_max are rounding noise; G holds their squares
    rtol = (10 * R.shape[-1] * torch.finfo(R.dtype).eps) ** 2
    return ((Rd @ torch.linalg.pinv(G, rtol=rtol, hermitian=True)) * Rd).sum(-1).float()


@torch.no_grad()
def read_dictionary(
    model: Unembed, train: Batch | None, opts: DictionaryOptions
) -> DictionaryResult:
    """Slot = the training input's direction; value = the token ``W_U`` maps it to, checked
    against the label. The layer is linear, so a datum can have an entry of its own only if its
    input has a direction of its own among the training inputs: its match score is its leverage
    (maximal data dimensionality) D*, which must reach ``min_share``."""
    W_U, b_U = model.W_U.detach(), model.b_U.detach()  # [inst, V, d], [inst, V]
    inst = W_U.shape[0]
    if train is None:
        entries = [
            DictEntry(i, [f"token:{v}"], None, [], v, [v], float("nan"))
            for i in range(inst)
            for v in range(W_U.shape[1])
        ]
        return DictionaryResult(NAME, entries)
    R = train.inputs.transpose(0, 1) * ~padding_mask(train).to(W_U.device)[..., None]
    logits = einops.einsum(R, W_U, "inst t d, inst v d -> inst t v") + b_U[:, None]
    token = logits.argmax(-1)
    labels = train.targets.transpose(0, 1)
    trivial = (R.norm(dim=-1) <= 1e-6) | padding_mask(train)
    dstar = _leverage(R)
    # the dictionary's token for j is read from W_U along j's own direction; it predicts the
    # model (read back) when it is the label the model was trained on and the model agrees
    covered = (dstar >= opts.min_share) & (token == labels) & ~trivial
    read_back = covered.clone()
    feats = None if train.features is None else train.features.transpose(0, 1)
    entries = [
        DictEntry(
            instance=i,
            slots=[f"input:{j}"],
            key=j,
            key_features=[] if feats is None else features_above(feats[i, j], 0.0),
            value=int(token[i, j]),
            value_features=[int(token[i, j])],
            match=float(dstar[i, j].clamp(0, 1)),
        )
        for i, j in covered.nonzero().tolist()
    ]
    return DictionaryResult(NAME, entries, covered.cpu(), read_back.cpu(), trivial.cpu())


def baseline(batch: Batch) -> Tensor:
    """Per instance: the cross-entropy (nats) of the best constant prediction, the empirical label
    distribution of ``batch``: its entropy."""
    y = batch.targets
    counts = torch.zeros(y.shape[1], int(y.max()) + 1).scatter_add_(
        1, y.T.long().cpu(), torch.ones(y.T.shape)
    )
    p = counts / counts.sum(1, keepdim=True)
    return -(p * p.clamp_min(1e-30).log()).sum(1)


def _task(spec) -> UnembedTask:
    feats = SparseFeatures(
        spec["n_features"],
        spec["sparsity"],
        normalize=spec["normalize"],
        data_version=spec["data_version"],
    )
    return UnembedTask(
        feats, spec["d_model"], n_instances=1, seed=spec["embed_seed"], labels=spec["labels"]
    )


def _logspace(lo: float, hi: float, n: int) -> list[int]:
    return sorted({int(round(v)) for v in np.geomspace(lo, hi, n)})


PRESETS = {
    "paper": {
        "grid": {"T": _logspace(3, 50_000, 20), "seed": [0, 1, 2]},
        "task": {"n_features": 10_000, "sparsity": 0.999, "d_model": 100},
        "train": {"steps": 50_000, "lr": 1e-3, "warmup": 2_500, "weight_decay": 1e-2},
    },
    # the rule label (largest active feature) over 300 features, ~10 active (S = 0.967),
    # through d_model = 20: test loss peaks near T ~ 5 d_model (benchmarks/dd_search.py)
    "cpu": {
        "grid": {"T": _logspace(3, 3000, 13), "seed": [0, 1, 2]},
        "task": {
            "n_features": 300,
            "sparsity": 0.967,
            "d_model": 20,
            "labels": "rule",
            "n_test": 1000,
        },
        "train": {"steps": 1000, "lr": 3e-2, "warmup": 50, "weight_decay": 1e-2},
    },
    # the cpu preset scaled down (120 features, ~18 active, d_model 8): still a bump, T ~ 55
    "smoke": {
        "grid": {"T": _logspace(3, 1000, 7), "seed": [0, 1]},
        "task": {
            "n_features": 120,
            "sparsity": 0.85,
            "d_model": 8,
            "labels": "rule",
            "n_test": 256,
        },
        "train": {"steps": 1000, "lr": 3e-2, "warmup": 50, "weight_decay": 1e-2},
    },
    # the quickstart's step 3: 8 of T = 1000 points planted with a random label among rule-labelled
    # ones (~2 active of 64 features through 48 dimensions), so the model can fit them
    "memorised": {
        "grid": {"T": [1000]},
        "task": {"n_features": 64, "sparsity": 0.97, "d_model": 48, "n_test": 1000},
        "train": {"steps": 1000, "lr": 3e-2, "weight_decay": 1e-2, "warmup": 50},
    },
    # the quickstart's table: a memorising (small T) and a generalising (large T) model
    "quickstart": {
        "grid": {"T": [16, 2000]},
        "task": {"n_features": 40, "sparsity": 0.9, "d_model": 10},
        "train": {"steps": 1500, "lr": 1e-2, "weight_decay": 1e-2, "warmup": 75, "batch_size": 512},
    },
}

BUNDLE = ModelBundle(
    model=Unembed,
    make_task=_task,
    task_defaults={
        "n_features": 100,
        "sparsity": 0.99,
        "normalize": True,
        "d_model": 20,
        "embed_seed": 0,
        "labels": "rule",
        "n_test": 2048,
    },
    presets=PRESETS,
    title="final layer (unembedding)",
    loss_units="loss per point (cross-entropy, nats)",
    baseline=baseline,
    read_dictionary=read_dictionary,
)
