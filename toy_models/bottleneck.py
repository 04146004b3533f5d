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
import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from memlens.data import Batch
from memlens.hooked import Circuits, HookedToyModel, ToyConfig, check_positive_int


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
            importance = tuple(torch.as_tensor(importance, dtype=torch.float32).tolist())
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

    @classmethod
    def _from_config(cls, cfg: BottleneckConfig) -> Bottleneck:
        return cls(
            n_features=cfg.n_features,
            d_hidden=cfg.d_hidden,
            n_instances=cfg.n_instances,
            tied=cfg.tied,
            importance=cfg.importance,
            seed=cfg.seed,
        )
