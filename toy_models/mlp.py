"""The MLP block: residual stream into an MLP (low to high dims, ReLU).

    a = ReLU(W_in r + b_in)        (hook_pre before the ReLU, hook_post after)
    y = W_out a + b_out            (hook_out)

Loss: squared error summed over output features, averaged over the batch.
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
from memlens.data import Batch, EmbeddedTask, SparseFeatures
from memlens.fused import (
    DerivedCache,
    blocks,
    gather_instance_major,
    instance_major,
    row_counts,
)
from memlens.hooked import Circuits, HookedToyModel, ToyConfig, check_positive_int
from memlens.lookup import (
    DictEntry,
    DictionaryOptions,
    DictionaryResult,
    features_above,
    padding_mask,
)

_inputs, _targets = DerivedCache(), DerivedCache()  # instance-major copies of a training set


def _with_ones(r: Tensor) -> Tensor:
    """``[inst, batch, d_model + 1]``: ``r`` instance-major with a column of ones (cached)."""

    def make() -> Tensor:
        return torch.cat([r.transpose(0, 1), r.new_ones(r.shape[1], r.shape[0], 1)], -1)

    return _inputs.get(r, make)


@dataclass(frozen=True)
class MLPConfig(ToyConfig):
    d_model: int = 4
    d_mlp: int = 16
    d_out: int = 8

    def validate(self) -> None:
        super().validate()
        check_positive_int("d_model", self.d_model)
        check_positive_int("d_mlp", self.d_mlp)
        check_positive_int("d_out", self.d_out)


class MLPBlock(HookedToyModel):
    """One ReLU MLP block with an instance axis. Hooks: hook_in, hook_pre, hook_post, hook_out."""

    Config = MLPConfig
    input_dims = ("batch", "inst", "d_model")
    circuit_families = ("neuron", "datum")
    representation_hook = "hook_post"

    def __init__(self, d_model: int, d_mlp: int, d_out: int, n_instances: int = 1, seed: int = 0):
        cfg = MLPConfig(
            n_instances=n_instances, seed=seed, d_model=d_model, d_mlp=d_mlp, d_out=d_out
        )
        super().__init__(cfg)
        s_in, s_out = 1 / math.sqrt(d_model), 1 / math.sqrt(d_mlp)
        self.W_in = nn.Parameter(
            self._init_per_instance((d_mlp, d_model), lambda t, g: t.normal_(0, s_in, generator=g))
        )
        self.b_in = nn.Parameter(torch.zeros(n_instances, d_mlp))
        self.W_out = nn.Parameter(
            self._init_per_instance(
                (d_out, d_mlp), lambda t, g: t.normal_(0, s_out, generator=g), salt=1
            )
        )
        self.b_out = nn.Parameter(torch.zeros(n_instances, d_out))
        self.hook_in = HookPoint()
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()
        self.hook_out = HookPoint()
        self.setup()

    @property
    def width(self) -> int:
        return max(self.cfg.d_mlp, self.cfg.d_out)

    @property
    def d_in(self) -> int:
        return self.cfg.d_model

    def forward(self, r: Float[Tensor, "batch inst d_model"]) -> Float[Tensor, "batch inst d_out"]:
        self.check_input(r)
        r = self.hook_in(r)
        pre = self.hook_pre(
            einops.einsum(self.W_in, r, "inst k d, batch inst d -> batch inst k") + self.b_in
        )
        a = self.hook_post(torch.relu(pre))
        return self.hook_out(
            einops.einsum(self.W_out, a, "inst o k, batch inst k -> batch inst o") + self.b_out
        )

    def per_example_loss(self, batch: Batch) -> Float[Tensor, "batch inst"]:
        return ((self(batch.inputs) - batch.target) ** 2).sum(-1)

    def fused_loss_and_grads(self, batch: Batch, rows: Tensor | None = None):
        """Losses and hand-derived gradients without autograd, for ``memlens.train``.

        Works on an instance-major copy of the data with a column of ones appended (made once per
        training set, so ``b_in`` rides in ``W_in``'s matmul), in blocks of about 2**19
        activations, the matmuls batched over the block's instances:

            pre = [r 1] [W_in b_in]ᵀ,  a = ReLU(pre),  d = (b_out - y) + a W_outᵀ  (0 if padded)
            loss = Σ d² / N,  gW_out = 2/N dᵀ a,  gb_out = 2/N Σ d,
            ga = (d W_out) ⊙ [a > 0],  [gW_in gb_in] = 2/N gaᵀ [r 1]
        """
        r, y = batch.inputs, batch.target
        if r.device.type != "cpu" or r.dtype != torch.float32 or y.dtype != torch.float32:
            return None
        if rows is None:
            r1, yI = _with_ones(r), instance_major(y, _targets)
            counts = None if batch.lengths is None else row_counts(batch)
        else:
            r1 = gather_instance_major(_with_ones(r), rows)
            yI = gather_instance_major(instance_major(y, _targets), rows)
            counts = None
        inst, T, d_in = r1.shape[0], r1.shape[1], r1.shape[2] - 1
        W_out, b_out = self.W_out.detach(), self.b_out.detach()
        W1 = torch.cat([self.W_in.detach(), self.b_in.detach()[..., None]], -1)  # [inst, k, d+1]
        g_W1, g_W_out, g_b_out = (torch.zeros_like(t) for t in (W1, W_out, b_out))
        loss = torch.zeros(inst, dtype=torch.float64)
        for si, sr in blocks(inst, T, max(self.cfg.d_mlp, self.cfg.d_out)):
            rc = r1[si, sr]
            a = torch.bmm(rc, W1[si].transpose(1, 2)).relu_()
            d = torch.sub(b_out[si, None], yI[si, sr]).baddbmm_(a, W_out[si].transpose(1, 2))
            if counts is not None:
                keep = torch.arange(sr.start, sr.stop)[None, :] < counts[si, None]
                d.mul_(keep[..., None])
            flat = d.flatten(1)
            loss[si] += torch.linalg.vecdot(flat, flat).double()
            g_W_out[si].baddbmm_(d.transpose(1, 2), a)
            g_b_out[si] += d.sum(1)
            ga = torch.ops.aten.threshold_backward(torch.bmm(d, W_out[si]), a, 0)
            g_W1[si].baddbmm_(ga.transpose(1, 2), rc)
        n = torch.full((inst,), float(T)) if counts is None else counts.clamp_min(1).float()
        s = 2.0 / n
        g_W1.mul_(s[:, None, None])
        return (loss / n.double()).float(), {
            "W_in": g_W1[..., :d_in].contiguous(),
            "b_in": g_W1[..., d_in].contiguous(),
            "W_out": g_W_out.mul_(s[:, None, None]),
            "b_out": g_b_out.mul_(s[:, None]),
        }

    def _check_targets(self, batch: Batch) -> None:
        t = batch.target
        want = (batch.inputs.shape[0], self.n_instances, self.cfg.d_out)
        if tuple(t.shape) != want:
            raise ValueError(
                f"MLPBlock targets must have shape [batch, inst, d_out] = {want}, "
                f"got {tuple(t.shape)}"
            )

    def circuits(self, train: Batch) -> Circuits:
        """``neuron:k`` is neuron k's activation on its key datum (the training point that drives it
        hardest at the current weights); ``datum:j`` is the fraction of training target j that the
        output reproduces, ⟨y_j, t_j⟩ / ‖t_j‖². Ablating ``neuron:k`` zeroes it at ``hook_post`` on
        every point; ablating ``datum:j`` zeroes point j's whole hidden code there."""
        train = self.check_batch(train)
        x, tgt = train.inputs.detach(), train.target.detach()
        with torch.no_grad():
            _, cache = self.run_with_cache(x, names_filter=["hook_post"])
        key = cache["hook_post"].argmax(0)  # [inst, k]
        norm2 = (tgt**2).sum(-1).clamp_min(1e-12)

        def readout(acts: dict[str, Tensor]) -> Tensor:
            post, out = acts["hook_post"], acts["hook_out"]
            lead = post.shape[:-3]
            idx = key.expand(*lead, 1, *key.shape)
            neuron = torch.gather(post, -3, idx).squeeze(-3)  # [..., inst, k]
            datum = ((out * tgt).sum(-1) / norm2).transpose(-1, -2)  # [..., inst, T]
            return torch.cat([neuron, datum], dim=-1)

        names = [f"neuron:{k}" for k in range(self.cfg.d_mlp)] + [
            f"datum:{j}" for j in range(len(train))
        ]
        # ablations on the training set at hook_post: neuron k silenced on every point; datum j's
        # whole hidden code silenced
        K, T = self.cfg.d_mlp, len(train)
        mask = torch.ones(K + T, T, self.n_instances, K, device=x.device)
        mask[torch.arange(K), :, :, torch.arange(K)] = 0
        mask[K + torch.arange(T), torch.arange(T)] = 0
        return Circuits(names, x, ("hook_post", "hook_out"), readout, {"hook_post": mask})


class MLPTask(EmbeddedTask):
    """Residual input r = E f into an MLP block whose target is the features f themselves."""

    def make_batch(self, f: Tensor, seed: int) -> Batch:
        return Batch(inputs=self.embed(f), targets=f, features=f)

    def model_kwargs(self) -> dict:
        return {
            "d_model": self.d_model,
            "d_out": self.features.n_features,
            "n_instances": self.n_instances,
        }


NAME = "mlp"


@torch.no_grad()
def read_dictionary(
    model: MLPBlock, train: Batch | None, opts: DictionaryOptions
) -> DictionaryResult:
    """Slot = neuron. Its key ``(W_in[k], b_in[k])`` is matched against the training inputs; its
    value ``W_out[:, k]`` times its activation is decoded into output features. With fewer neurons
    than points the dictionary is *superposed*: each datum is decompiled into a **sparse code**,
    the smallest set of neurons (greedily, by their contribution along the datum's output) whose
    values reproduce the output to within ``rtol``, capped at ``max_code`` neurons. A datum is
    covered when its code's neurons spend at least ``min_share`` of their activation over the
    training set on it; read back when its code reproduces the model's output."""
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
                features_above(W_out[i, :, k], opts.value_threshold),
                float("nan"),
            )
            for i in range(inst)
            for k in range(K)
            if W_out[i, :, k].norm() > 0
        ]
        return DictionaryResult(NAME, entries)
    R = train.inputs.transpose(0, 1)  # [inst, T, d]
    A = torch.relu(einops.einsum(R, W_in, "inst t d, inst k d -> inst t k") + b_in[:, None])
    A = A * ~padding_mask(train).to(A.device)[..., None]  # padded rows store nothing
    C = A[:, :, None, :] * W_out[:, None]  # [inst, T, O, K] each neuron's write
    delta = C.sum(-1)  # model output minus b_out
    dn = delta.norm(dim=-1)  # [inst, T]
    trivial = (dn <= 1e-6 + 1e-3 * dn.amax(-1, keepdim=True)) | padding_mask(train)
    proj = (C * delta[..., None]).sum(2) / (dn**2).clamp_min(1e-30)[..., None]
    order = proj.argsort(-1, descending=True)  # [inst, T, K]
    L = min(opts.max_code, K)
    top = order[..., :L]
    Cs = torch.gather(C, 3, top[:, :, None, :].expand(-1, -1, C.shape[2], -1))
    cum = Cs.cumsum(-1)  # [inst, T, O, L]
    res = (cum - delta[..., None]).norm(dim=2) / dn.clamp_min(1e-30)[..., None]
    ok = res <= opts.rtol
    found = ok.any(-1) & ~trivial
    code = torch.where(found, ok.float().argmax(-1) + 1, torch.zeros_like(dn).long())
    # specificity: the share of the code neurons' activation (over the set) spent on j; a
    # datum without a code within max_code is judged on its max_code strongest neurons
    size = torch.where(found, code, torch.full_like(code, L))
    used = torch.arange(L)[None, None, :] < size[..., None]  # [inst, T, L]
    a_own = torch.gather(A, 2, top) * used
    a_all = torch.gather(A.sum(1, keepdim=True).expand(-1, A.shape[1], -1), 2, top) * used
    share = a_own.sum(-1) / a_all.sum(-1).clamp_min(1e-30)
    covered = (share >= opts.min_share) & ~trivial
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
                key_features=[] if feats is None else features_above(feats[i, j], 0.0),
                value=[round(v, 5) for v in pred.tolist()],
                value_features=features_above(pred, opts.value_threshold),
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


def baseline(batch: Batch) -> Tensor:
    """Per instance: the loss of the best constant prediction (each output's mean), in the
    model's units (squared error summed over outputs)."""
    y = batch.target
    return ((y - y.mean(0, keepdim=True)) ** 2).sum(-1).mean(0)


def _task(spec) -> MLPTask:
    feats = SparseFeatures(
        spec["n_features"],
        spec["sparsity"],
        normalize=spec["normalize"],
        data_version=spec["data_version"],
    )
    return MLPTask(feats, spec["d_model"], n_instances=1, seed=spec["embed_seed"])


def _logspace(lo: float, hi: float, n: int) -> list[int]:
    return sorted({int(round(v)) for v in np.geomspace(lo, hi, n)})


PRESETS = {
    "paper": {
        "grid": {"T": _logspace(3, 50_000, 20), "seed": [0, 1, 2]},
        "task": {"n_features": 10_000, "sparsity": 0.999, "d_model": 100, "d_mlp": 256},
        "train": {"steps": 50_000, "lr": 1e-3, "warmup": 2_500, "weight_decay": 1e-2},
    },
    # ~20 active features of 100 (S = 0.8) seen through d_model = 20; weight decay 0.1 (it
    # clears the random init that masks the bump) and 3,000 steps: test loss peaks near
    # T ~ 2 d_mlp (benchmarks/dd_search.py)
    "cpu": {
        "grid": {"T": _logspace(3, 1000, 13), "seed": [0, 1, 2]},
        "task": {"n_features": 100, "sparsity": 0.8, "d_model": 20, "d_mlp": 64, "n_test": 1000},
        "train": {"steps": 3000, "lr": 1e-2, "warmup": 50, "weight_decay": 0.1},
    },
    # the cpu preset scaled down (~9 active of 30 features, d_model 8): still a bump, T ~ 15
    "smoke": {
        "grid": {"T": _logspace(3, 400, 7), "seed": [0, 1]},
        "task": {"n_features": 30, "sparsity": 0.7, "d_model": 8, "d_mlp": 16, "n_test": 256},
        "train": {"steps": 1000, "lr": 1e-2, "warmup": 50, "weight_decay": 0.1},
    },
    # `memlens report`'s phase diagram: T x MLP width on the cpu preset's data and training (the
    # bump near T ~ 1.4 d_mlp moves with the width; scripts/regenerate_double_descent.py --phase)
    "phase": {
        "grid": {"T": _logspace(3, 1000, 8), "d_mlp": [16, 64, 128], "seed": [0, 1]},
        "task": {"n_features": 100, "sparsity": 0.8, "d_model": 20, "n_test": 1000},
        "train": {"steps": 3000, "lr": 1e-2, "warmup": 50, "weight_decay": 0.1},
    },
    # the quickstart's table: a memorising (small T) and a generalising (large T) model
    "quickstart": {
        "grid": {"T": [16, 2000]},
        "task": {"n_features": 40, "sparsity": 0.9, "d_model": 10, "d_mlp": 64},
        "train": {"steps": 1500, "lr": 3e-3, "weight_decay": 1e-2, "warmup": 75, "batch_size": 512},
    },
    # the quickstart's story: a memorising and a generalising MLP block, an L1 penalty on the
    # activations so that each neuron stores one or two points (a lookup table)
    "story": {
        "grid": {"T": [16, 2048]},
        "task": {"n_features": 64, "sparsity": 0.9, "d_model": 8, "d_mlp": 32},
        "train": {"steps": 2000, "lr": 1e-2, "weight_decay": 1e-2, "warmup": 100, "l1": 0.1},
    },
}

BUNDLE = ModelBundle(
    model=MLPBlock,
    make_task=_task,
    task_defaults={
        "n_features": 100,
        "sparsity": 0.99,
        "normalize": True,
        "d_model": 20,
        "embed_seed": 0,
        "n_test": 2048,
    },
    model_fields=("d_mlp",),
    presets=PRESETS,
    title="MLP block",
    loss_units="loss per point (squared error summed over outputs)",
    baseline=baseline,
    read_dictionary=read_dictionary,
)
