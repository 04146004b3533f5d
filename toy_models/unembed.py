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
from memlens.hooked import Circuits, HookedToyModel, ToyConfig, check_positive_int


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
        T = len(train)  # ablating datum j zeroes its residual input at hook_in
        mask = torch.ones(T, T, self.n_instances, self.cfg.d_model, device=y.device)
        mask[torch.arange(T), torch.arange(T)] = 0
        inputs = train.inputs.detach()
        return Circuits(names, inputs, ("hook_logits",), readout, {"hook_in": mask})

    @classmethod
    def _from_config(cls, cfg: UnembedConfig) -> Unembed:
        return cls(
            d_model=cfg.d_model, d_vocab=cfg.d_vocab, n_instances=cfg.n_instances, seed=cfg.seed
        )
