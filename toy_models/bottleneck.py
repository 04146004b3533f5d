"""The bottleneck (TMS) model: high to low dims and back, as in Toy Models of Superposition.

    h  = W x                       (m < n; hook_hidden)
    x' = ReLU(W_dec h + b)         (W_dec = Wᵀ when tied; hook_pre before the ReLU, hook_out after)

Loss convention: importance-weighted squared error **summed over features**, averaged over the
batch (the convention of Anthropic's memorisation paper; ARENA's notebook averages over features
instead, which divides our loss by n).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import einops
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from memlens.bundle import ModelBundle
from memlens.data import Batch, SparseFeatures, Task
from memlens.hooked import Circuits, HookedToyModel, ToyConfig, check_positive_int
from memlens.lookup import (
    DictEntry,
    DictionaryOptions,
    DictionaryResult,
    features_above,
    padding_mask,
)


@dataclass(frozen=True)
class BottleneckConfig(ToyConfig):
    n_features: int = 5
    d_hidden: int = 2
    tied: bool = True
    importance: tuple | None = None  # [feat] or [inst][feat]; None means uniform 1

    def validate(self) -> None:
        super().validate()
        check_positive_int("n_features", self.n_features)
        check_positive_int("d_hidden", self.d_hidden)
        if not isinstance(self.tied, bool):
            raise ValueError(f"tied must be a bool, got {self.tied!r}")
        if self.importance is not None:
            imp = torch.as_tensor(self.importance, dtype=torch.float32)
            ok_shapes = {(self.n_features,), (self.n_instances, self.n_features)}
            if tuple(imp.shape) not in ok_shapes:
                raise ValueError(
                    f"importance must have shape [feat={self.n_features}] or "
                    f"[inst={self.n_instances}, feat={self.n_features}], got {tuple(imp.shape)}"
                )
            if bool((imp < 0).any()) or not bool(torch.isfinite(imp).all()):
                raise ValueError("importance must be finite and non-negative")


class Bottleneck(HookedToyModel):
    """TMS bottleneck with an instance axis. Hooks: hook_in, hook_hidden, hook_pre, hook_out."""

    Config = BottleneckConfig
    circuit_families = ("feature", "datum")
    representation_hook = "hook_hidden"

    def __init__(
        self,
        n_features: int,
        d_hidden: int,
        n_instances: int = 1,
        tied: bool = True,
        importance=None,
        seed: int = 0,
    ):
        if importance is not None:
            try:
                importance = tuple(torch.as_tensor(importance, dtype=torch.float32).tolist())
            except (TypeError, ValueError) as exc:
                raise ValueError(f"importance must be numbers, got {importance!r}") from exc
            importance = tuple(tuple(r) if isinstance(r, list) else r for r in importance)
        cfg = BottleneckConfig(
            n_instances=n_instances,
            seed=seed,
            n_features=n_features,
            d_hidden=d_hidden,
            tied=tied,
            importance=importance,
        )
        super().__init__(cfg)
        n, m = n_features, d_hidden
        std = math.sqrt(2.0 / (n + m))  # Xavier normal, per instance
        self.W = nn.Parameter(
            self._init_per_instance((m, n), lambda t, g: t.normal_(0, std, generator=g))
        )
        if not tied:
            self.W_dec = nn.Parameter(
                self._init_per_instance((n, m), lambda t, g: t.normal_(0, std, generator=g), salt=1)
            )
        self.b = nn.Parameter(torch.zeros(n_instances, n))
        imp = (
            torch.ones(n_instances, n)
            if importance is None
            else torch.as_tensor(importance, dtype=torch.float32).expand(n_instances, n).clone()
        )
        self.register_buffer("importance", imp)
        self.hook_in = HookPoint()
        self.hook_hidden = HookPoint()
        self.hook_pre = HookPoint()
        self.hook_out = HookPoint()
        self.setup()

    @property
    def width(self) -> int:
        return self.cfg.n_features

    @property
    def d_in(self) -> int:
        return self.cfg.n_features

    def feature_directions(self) -> Float[Tensor, "inst m feat"]:
        return self.W.detach()

    @property
    def decoder(self) -> Float[Tensor, "inst feat hidden"]:
        return self.W.transpose(1, 2) if self.cfg.tied else self.W_dec

    def forward(self, x: Float[Tensor, "batch inst feat"]) -> Float[Tensor, "batch inst feat"]:
        self.check_input(x)
        x = self.hook_in(x)
        h = self.hook_hidden(einops.einsum(self.W, x, "inst m n, batch inst n -> batch inst m"))
        pre = self.hook_pre(
            einops.einsum(self.decoder, h, "inst n m, batch inst m -> batch inst n") + self.b
        )
        return self.hook_out(torch.relu(pre))

    def per_example_loss(self, batch: Batch) -> Float[Tensor, "batch inst"]:
        out = self(batch.inputs)
        return ((out - batch.target) ** 2 * self.importance).sum(-1)

    def fused_loss_and_grads(self, batch: Batch, rows: Tensor | None = None):
        """Losses and gradients in one pass of a C++ kernel that reads the sparse input only at
        its active entries (:mod:`toy_models.bottleneck_kernel`); None where it does not apply.
        ``memlens.train`` calls it (see :mod:`memlens.fused`)."""
        from toy_models.bottleneck_kernel import loss_and_grads

        return loss_and_grads(self, batch, rows)

    def sgld_kernel(self, data: Batch, batch_size: int | None):
        """Fused SGLD steps for copies of this model's instances on ``data`` (a C++ kernel,
        :mod:`toy_models.bottleneck_sgld`); None where it does not apply. The sampler calls it
        (see :mod:`memlens.sampling.fused_sgld`)."""
        from toy_models.bottleneck_sgld import sgld_kernel

        return sgld_kernel(self, data, batch_size)

    def _check_targets(self, batch: Batch) -> None:
        if batch.targets is not None and batch.targets.shape != batch.inputs.shape:
            raise ValueError(
                f"Bottleneck targets must match inputs {tuple(batch.inputs.shape)}, "
                f"got {tuple(batch.targets.shape)}"
            )

    def circuits(self, train: Tensor | Batch) -> Circuits:
        """``feature:i`` is feature i's reconstruction x'_i on the one-hot input e_i; ``datum:j``
        is the fraction of training point j reconstructed, ⟨x'_j, x_j⟩ / ‖x_j‖², on x_j.
        Ablating ``feature:i`` zeroes output i at ``hook_out``; ablating ``datum:j`` zeroes point
        j's hidden vector at ``hook_hidden``."""
        train = self.check_batch(train)
        n, inst = self.cfg.n_features, self.n_instances
        x = train.inputs.detach()
        eye = torch.eye(n, device=x.device, dtype=x.dtype)[:, None, :].expand(n, inst, n)
        inputs = torch.cat([eye, x], dim=0)
        norm2 = (x**2).sum(-1).clamp_min(1e-12)

        def readout(acts: dict[str, Tensor]) -> Tensor:
            out = acts["hook_out"]
            feat = torch.diagonal(out[..., :n, :, :], dim1=-3, dim2=-1)  # [..., inst, n]
            datum = ((out[..., n:, :, :] * x).sum(-1) / norm2).transpose(-1, -2)  # [..., inst, T]
            return torch.cat([feat, datum], dim=-1)

        names = [f"feature:{i}" for i in range(n)] + [f"datum:{j}" for j in range(len(train))]
        # ablations on the training set: feature i loses its output x'_i; datum j its hidden h_j
        T, m = len(train), self.cfg.d_hidden
        out_mask = torch.ones(n + T, T, inst, n, device=x.device)
        out_mask[torch.arange(n), :, :, torch.arange(n)] = 0
        hid_mask = torch.ones(n + T, T, inst, m, device=x.device)
        hid_mask[n + torch.arange(T), torch.arange(T)] = 0
        ablations = {"hook_out": out_mask, "hook_hidden": hid_mask}
        return Circuits(names, inputs, ("hook_out",), readout, ablations)


class BottleneckTask(Task):
    """Autoencode the sparse features themselves (the TMS / memorisation setting)."""

    def make_batch(self, f: Tensor, seed: int) -> Batch:
        return Batch(inputs=f, targets=None, features=f)

    def model_kwargs(self) -> dict:
        kw = {"n_features": self.features.n_features, "n_instances": self.n_instances}
        if self.features.importance is not None:
            kw["importance"] = self.features.importance_tensor(self.n_instances).tolist()
        return kw


@torch.no_grad()
def read_dictionary(
    model: Bottleneck, train: Batch | None, opts: DictionaryOptions
) -> DictionaryResult:
    """Slot = the hidden direction h_j of a training point; value = the decoded pattern there,
    ReLU(W_dec h_j + b); key = the training input that pattern matches best (cosine), which must
    beat the runner-up by ``min_margin``. Read-back: the value reproduces the training point it
    stores (relative L2 within ``rtol``), so the table returns the datum without the model."""
    name = "bottleneck"
    W, b = model.W.detach(), model.b.detach()  # [inst, m, n], [inst, n]
    dec = model.decoder.detach()  # [inst, n, m]
    if train is None:
        cols = W.transpose(1, 2)  # feature directions as slots
        out = torch.relu(einops.einsum(dec, cols, "inst n m, inst f m -> inst f n") + b[:, None])
        entries = [
            DictEntry(
                i,
                [f"direction:feature{f}"],
                None,
                [f],
                out[i, f].tolist(),
                features_above(out[i, f], opts.value_threshold),
                float("nan"),
            )
            for i in range(W.shape[0])
            for f in range(W.shape[2])
            if W[i, :, f].norm() > 0
        ]
        return DictionaryResult(name, entries)
    pad = padding_mask(train).to(W.device)
    X = train.inputs.transpose(0, 1) * ~pad[..., None]
    H = einops.einsum(X, W, "inst t n, inst m n -> inst t m")
    out = torch.relu(einops.einsum(H, dec, "inst t m, inst n m -> inst t n") + b[:, None])
    xn = X / X.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    on = out / out.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cos = einops.einsum(on, xn, "inst s n, inst t n -> inst s t")  # slot s vs datum t
    trivial = (X.norm(dim=-1) <= 1e-6) | (H.norm(dim=-1) <= 1e-6) | pad
    cos = cos.masked_fill(trivial[:, None, :], -1.0)
    best = cos.topk(min(2, cos.shape[-1]), dim=-1)
    named = best.indices[..., 0]
    match = best.values[..., 0]
    runner = best.values[..., 1] if cos.shape[-1] > 1 else torch.full_like(match, -1.0)
    T = X.shape[1]
    own = named == torch.arange(T, device=named.device)[None]
    specific = (match >= 1 - opts.rtol) & (match - runner >= opts.min_margin) & ~trivial
    covered = own & specific
    # read back: the value stored under key j, compared with the training point j itself
    err = (out - X).norm(dim=-1)
    read_back = covered & (err <= opts.rtol * X.norm(dim=-1).clamp_min(1e-12))
    entries = [
        DictEntry(
            instance=i,
            slots=[f"direction:{j}"],
            key=int(named[i, j]),
            key_features=features_above(X[i, j], 0.0),
            value=[round(v, 5) for v in out[i, j].tolist()],
            value_features=features_above(out[i, j], opts.value_threshold),
            match=float(match[i, j]),
        )
        for i, j in specific.nonzero().tolist()
    ]
    slot_keys = torch.where(specific, named, torch.full_like(named, -1))
    return DictionaryResult(
        name, entries, covered.cpu(), read_back.cpu(), trivial.cpu(), None, slot_keys.cpu()
    )


def baseline(batch: Batch) -> Tensor:
    """Per instance: the loss of the best constant prediction (each feature's mean), in the
    model's units (squared error summed over features; importance 1)."""
    x = batch.target
    return ((x - x.mean(0, keepdim=True)) ** 2).sum(-1).mean(0)


def _task(spec) -> BottleneckTask:
    feats = SparseFeatures(
        spec["n_features"],
        spec["sparsity"],
        normalize=spec["normalize"],
        data_version=spec["data_version"],
    )
    return BottleneckTask(feats, n_instances=1)


def _logspace(lo: float, hi: float, n: int) -> list[int]:
    return sorted({int(round(v)) for v in np.geomspace(lo, hi, n)})


#: paper: Anthropic's scale (Henighan et al. 2023). cpu: n=1e3, S=0.99 (the transition ~10x lower
#: in T), minutes on a laptop. smoke: seconds, for tests.
PRESETS = {
    "paper": {
        "grid": {"T": _logspace(3, 50_000, 20), "seed": [0, 1, 2]},
        "task": {"n_features": 10_000, "sparsity": 0.999, "d_hidden": 2},
        "train": {"steps": 50_000, "lr": 1e-3, "warmup": 2_500, "weight_decay": 1e-2},
    },
    "cpu": {
        "grid": {"T": _logspace(3, 1000, 12), "seed": [0, 1, 2]},
        "task": {"n_features": 1000, "sparsity": 0.99, "d_hidden": 2, "n_test": 1000},
        "train": {"steps": 1000, "lr": 1e-2, "warmup": 50, "weight_decay": 1e-2},
    },
    "smoke": {
        "grid": {"T": [3, 6, 12, 24], "seed": [0, 1]},
        "task": {"n_features": 40, "sparsity": 0.9, "d_hidden": 2, "n_test": 256},
        "train": {"steps": 60, "lr": 1e-2, "warmup": 5, "weight_decay": 1e-2},
    },
    # `memlens report`'s phase diagram: T x hidden width (Hobbhahn: the test-loss peak moves to
    # larger T as m grows); n=200, S=0.95, so T(1-S) = 10 at T = 200. 3,000 steps: with 1,000 the
    # bump faded with width (1.45x, 1.18x, 1.03x); 12 values of T resolve the moving peak
    # (scripts/regenerate_double_descent.py --phase records it). About a minute on 2 cores.
    "phase": {
        "grid": {"T": _logspace(3, 1000, 12), "d_hidden": [2, 3, 5], "seed": [0, 1]},
        "task": {"n_features": 200, "sparsity": 0.95, "n_test": 1000},
        "train": {"steps": 3000, "lr": 1e-2, "warmup": 50, "weight_decay": 1e-2},
    },
    # the quickstart's table: a memorising (small T) and a generalising (large T) model
    "quickstart": {
        "grid": {"T": [10, 2000]},
        "task": {"n_features": 100, "sparsity": 0.95, "d_hidden": 4},
        "train": {"steps": 1500, "lr": 3e-3, "weight_decay": 1e-2, "warmup": 75, "batch_size": 512},
    },
}

BUNDLE = ModelBundle(
    model=Bottleneck,
    make_task=_task,
    task_defaults={"n_features": 1000, "sparsity": 0.99, "normalize": True, "n_test": 2048},
    model_fields=("d_hidden", "tied"),
    presets=PRESETS,
    title="bottleneck (TMS autoencoder)",
    loss_units="loss per point (squared error summed over features)",
    baseline=baseline,
    read_dictionary=read_dictionary,
)
