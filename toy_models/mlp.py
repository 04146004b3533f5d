"""The MLP block: residual stream into an MLP (low to high dims, ReLU).

    a = ReLU(W_in r + b_in)        (hook_pre before the ReLU, hook_post after)
    y = W_out a + b_out            (hook_out)

Loss: squared error summed over output features, averaged over the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import einops
import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from memlens.data import Batch
from memlens.fused import (
    DerivedCache,
    blocks,
    gather_instance_major,
    instance_major,
    row_counts,
)
from memlens.hooked import Circuits, HookedToyModel, ToyConfig, check_positive_int

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
        output reproduces, ⟨y_j, t_j⟩ / ‖t_j‖²."""
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
        return Circuits(names=names, inputs=x, hooks=("hook_post", "hook_out"), readout=readout)

    @classmethod
    def _from_config(cls, cfg: MLPConfig) -> MLPBlock:
        return cls(
            d_model=cfg.d_model,
            d_mlp=cfg.d_mlp,
            d_out=cfg.d_out,
            n_instances=cfg.n_instances,
            seed=cfg.seed,
        )
