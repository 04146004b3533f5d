"""The final layer: residual stream into vocabulary logits.

    logits = W_U r + b_U           (hook_logits)

Loss: cross-entropy against a token label, averaged over the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from memlens.data import Batch
from memlens.fused import DerivedCache, blocks, gather_instance_major, instance_major, row_counts
from memlens.hooked import Circuits, HookedToyModel, ToyConfig, check_positive_int

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
                "targets), e.g. from memlens.data.UnembedTask"
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
        return Circuits(
            names=names, inputs=train.inputs.detach(), hooks=("hook_logits",), readout=readout
        )

    @classmethod
    def _from_config(cls, cfg: UnembedConfig) -> Unembed:
        return cls(
            d_model=cfg.d_model, d_vocab=cfg.d_vocab, n_instances=cfg.n_instances, seed=cfg.seed
        )
