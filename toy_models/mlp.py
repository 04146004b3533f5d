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
from memlens.hooked import Circuits, HookedToyModel, ToyConfig, check_positive_int


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

    @classmethod
    def _from_config(cls, cfg: MLPConfig) -> MLPBlock:
        return cls(
            d_model=cfg.d_model,
            d_mlp=cfg.d_mlp,
            d_out=cfg.d_out,
            n_instances=cfg.n_instances,
            seed=cfg.seed,
        )
