"""Feature dimensionality, data dimensionality and maximal data dimensionality (D*).

Definitions (background.md §3; Elhage et al. 2022, Henighan et al. 2023, Hobbhahn 2023):

* feature dimensionality ``D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)²`` for the columns ``W_i`` of ``W`` (m × n);
* dimensions per feature ``D* = m / ‖W‖_F²``;
* data dimensionality ``D_i = ‖h_i‖² / Σ_j (ĥ_i·h_j)²`` for the rows ``h_i`` of ``H`` (T × m);
* maximal data dimensionality ``D*_i = sup_v (v·h_i)² / Σ_j (v·h_j)² = h_iᵀ (HᵀH)⁺ h_i``, the
  statistical leverage score, so ``Σ_i D*_i = rank(H)``.

Every sum over j is rewritten through the m × m Gram matrix (``Σ_j (u·h_j)² = uᵀ HᵀH u``), so
nothing materialises a T × T matrix: O(T·m² + m³) time, O(T·m) memory, batched over instances.

Layouts: ``W`` is ``[m, n]`` or ``[inst, m, n]`` (the Bottleneck's ``W``); ``H`` is ``[T, m]`` or
``[inst, T, m]`` (instances first, like ``W``; a hook's ``[batch, inst, m]`` activation is
``H.transpose(0, 1)``). Results are ``[n]`` / ``[T]`` or ``[inst, n]`` / ``[inst, T]``.
A zero column / row gets dimensionality 0.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from jaxtyping import Float
from torch import Tensor

from memlens.data import Batch
from memlens.io import jsonable
from memlens.probe import Probe, ProbeResult

__all__ = [
    "feature_dimensionality",
    "dims_per_feature",
    "data_dimensionality",
    "max_data_dimensionality",
    "DimensionalityProbe",
    "DimensionalityResult",
]

#: rows per chunk when accumulating the Gram matrix in float64 (bounds the temporary copy)
GRAM_CHUNK = 1 << 16
#: polytope fractions TMS features cluster at (background.md §3)
FRACTIONS = {1.0: "1", 0.75: "3/4", 2 / 3: "2/3", 0.5: "1/2", 0.4: "2/5", 0.375: "3/8"}


def _as_batched(x: Tensor, name: str, dims: str) -> tuple[Tensor, bool]:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim not in (2, 3):
        raise ValueError(f"{name} must have shape [{dims}] or [inst, {dims}], got {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float()
    if not bool(torch.isfinite(x.sum(dtype=torch.float64))):  # NaN/inf propagate; one pass
        raise ValueError(f"{name} contains NaN or inf; dimensionalities are undefined")
    return (x, False) if x.ndim == 3 else (x[None], True)


def _gram(H: Float[Tensor, "inst T m"]) -> Float[Tensor, "inst m m"]:
    """HᵀH accumulated in float64 over row chunks (exact enough for rank decisions)."""
    inst, T, m = H.shape
    G = torch.zeros(inst, m, m, dtype=torch.float64, device=H.device)
    for a in range(0, T, GRAM_CHUNK):
        h = H[:, a : a + GRAM_CHUNK].double()
        G.baddbmm_(h.transpose(1, 2), h)  # Σ_t h_t h_tᵀ
    return G


def _quadratic_ratio(X: Float[Tensor, "inst T m"], G: Tensor) -> Float[Tensor, "inst T"]:
    """‖x_i‖⁴ / x_iᵀ G x_i, with 0 where x_i = 0: the 'dimensionality' of each row."""
    Gx = G.to(X.dtype)
    out = torch.empty(X.shape[:2], dtype=X.dtype, device=X.device)
    for a in range(0, X.shape[1], GRAM_CHUNK):  # chunks stay cache-resident
        x = X[:, a : a + GRAM_CHUNK]
        quad = (torch.bmm(x, Gx) * x).sum(-1)
        n2 = x.square().sum(-1)
        d = n2 * n2 / quad.clamp_min(torch.finfo(X.dtype).tiny)
        out[:, a : a + GRAM_CHUNK] = torch.where(n2 > 0, d, torch.zeros_like(d))
    return out


def feature_dimensionality(W: Float[Tensor, "*inst m n"]) -> Float[Tensor, "*inst n"]:
    """``D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)²`` for each column (feature) of ``W``; 0 for a zero column."""
    Wb, single = _as_batched(W, "W", "m, n")
    cols = Wb.transpose(1, 2)  # [inst, n, m]: features as rows
    D = _quadratic_ratio(cols, _gram(cols))
    return D[0] if single else D


def dims_per_feature(W: Float[Tensor, "*inst m n"]) -> Float[Tensor, "*inst"]:
    """``D* = m / ‖W‖_F²`` ("dimensions per feature"); inf for W = 0."""
    Wb, single = _as_batched(W, "W", "m, n")
    m = Wb.shape[1]
    out = m / (Wb.double() ** 2).sum((1, 2))
    out = out.to(Wb.dtype)
    return out[0] if single else out


def data_dimensionality(H: Float[Tensor, "*inst T m"]) -> Float[Tensor, "*inst T"]:
    """``D_i = ‖h_i‖² / Σ_j (ĥ_i·h_j)²`` for each row (point) of ``H``; 0 for a zero row."""
    Hb, single = _as_batched(H, "H", "T, m")
    D = _quadratic_ratio(Hb, _gram(Hb))
    return D[0] if single else D


def max_data_dimensionality(
    H: Float[Tensor, "*inst T m"], rtol: float | None = None
) -> Float[Tensor, "*inst T"]:
    """Maximal data dimensionality ``D*_i = h_iᵀ (HᵀH)⁺ h_i`` (the leverage score of row i).

    The pseudo-inverse comes from an eigendecomposition of the m × m Gram matrix in float64.
    Singular values below ``rtol · σ_max`` count as zero (default ``10 · m · eps`` of H's dtype),
    so a rank-deficient H is handled and ``Σ_i D*_i = rank(H)``.
    """
    Hb, single = _as_batched(H, "H", "T, m")
    m = Hb.shape[-1]
    if rtol is None:
        rtol = 10 * m * torch.finfo(Hb.dtype).eps
    if not (isinstance(rtol, (int, float)) and 0 <= rtol < 1):
        raise ValueError(f"rtol must be in [0, 1), got {rtol!r}")
    evals, evecs = torch.linalg.eigh(_gram(Hb))  # ascending, [inst, m], [inst, m, m]
    lam_max = evals[:, -1:].clamp_min(0)
    keep = (evals > (rtol**2) * lam_max) & (evals > 0)
    inv_sqrt = torch.where(keep, evals.clamp_min(1e-300).rsqrt(), torch.zeros_like(evals))
    # whitening map: D*_i = ‖h_i V Λ^{-1/2}‖² over the kept eigen-directions
    M = (evecs * inv_sqrt[:, None, :]).to(Hb.dtype)
    D = torch.empty(Hb.shape[:2], dtype=Hb.dtype, device=Hb.device)
    for a in range(0, Hb.shape[1], GRAM_CHUNK):
        D[:, a : a + GRAM_CHUNK] = torch.bmm(Hb[:, a : a + GRAM_CHUNK], M).square().sum(-1)
    return D[0] if single else D


# ------------------------------------------------------------------------------------------ probe


def _nan_to_none(x):
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


@dataclasses.dataclass
class DimensionalityResult(ProbeResult):
    """Per-instance dimensionalities. Padded training rows (``Batch.lengths``) are NaN.

    Fields:
        hook: where the hidden vectors were read.
        data_dim, max_data_dim: ``[inst, T]``.
        feature_dim: ``[inst, feat]`` from the model's ``W`` (a Bottleneck), else None.
        dims_per_feature: ``[inst]`` m / ‖W‖_F², else None.
        hidden: ``[inst, T, m]`` the hidden vectors (kept for plots); W: ``[inst, m, n]`` or None.
    """

    hook: str
    data_dim: Float[Tensor, "inst T"]
    max_data_dim: Float[Tensor, "inst T"]
    feature_dim: Float[Tensor, "inst feat"] | None = None
    dims_per_feature: Float[Tensor, " inst"] | None = None
    hidden: Float[Tensor, "inst T m"] | None = dataclasses.field(default=None, repr=False)
    W: Float[Tensor, "inst m n"] | None = dataclasses.field(default=None, repr=False)

    @property
    def n_instances(self) -> int:
        return self.data_dim.shape[0]

    def to_dict(self) -> dict:
        d = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("hidden", "W")
        }
        return _nan_to_none(jsonable(d))

    def instance_scalars(self) -> dict[str, Tensor]:
        """Per-instance summaries ``{name: [inst]}`` (a sweep packs one cell per instance)."""
        out = {
            "mean_data_dim": self.data_dim.nanmean(-1),
            "mean_max_data_dim": self.max_data_dim.nanmean(-1),
            "sum_max_data_dim": self.max_data_dim.nansum(-1),
        }
        if self.feature_dim is not None:
            out["sum_feature_dim"] = self.feature_dim.sum(-1)
            out["mean_feature_dim"] = self.feature_dim.mean(-1)
        if self.dims_per_feature is not None:
            out["dims_per_feature"] = self.dims_per_feature
        return out

    def scalars(self, instance: int | None = None) -> dict[str, float]:
        """Means over instances, or one instance's values with ``instance=i``."""
        per = self.instance_scalars()
        if instance is not None:
            return {k: float(v[instance]) for k, v in per.items()}
        return {k: float(v.float().mean()) for k, v in per.items()}

    def summary(self) -> str:
        T = self.data_dim.shape[-1]
        lines = [f"dimensionality at {self.hook}: {self.n_instances} instance(s), T={T}"]
        for i in range(self.n_instances):
            s = self.scalars(i)
            dstar = self.max_data_dim[i]
            top = torch.nan_to_num(dstar, nan=-1.0).argsort(descending=True)[:3].tolist()
            line = (
                f"  inst {i}: mean D={s['mean_data_dim']:.3g}, mean D*={s['mean_max_data_dim']:.3g}"
                f" (Σ D*={s['sum_max_data_dim']:.3g}), top-D* points {top}"
            )
            if self.feature_dim is not None:
                line += (
                    f"; features Σ D_i={s['sum_feature_dim']:.3g}, "
                    f"dims/feature={s['dims_per_feature']:.3g}"
                )
            lines.append(line)
        return "\n".join(lines)

    def plot(self, ax=None, instances: list[int] | None = None):
        """Stick plots (Anthropic style) of data D and D* per point (sorted by D*), feature
        dimensionality per feature when known, and for m = 2 the hidden vectors with feature
        directions. With ``ax`` given, draws only the D* stick plot of instance 0 there."""
        import matplotlib.pyplot as plt

        if ax is not None:
            self._stick_data(ax, 0)
            return ax.figure
        insts = list(range(min(self.n_instances, 4))) if instances is None else list(instances)
        m = None if self.hidden is None else self.hidden.shape[-1]
        cols = 1 + (self.feature_dim is not None) + (m == 2)
        fig, axes = plt.subplots(
            len(insts), cols, figsize=(4.2 * cols, 3.0 * len(insts)), squeeze=False
        )
        for r, i in enumerate(insts):
            c = 0
            self._stick_data(axes[r, c], i)
            if self.feature_dim is not None:
                c += 1
                self._stick_features(axes[r, c], i)
            if m == 2:
                c += 1
                self._scatter(axes[r, c], i)
        fig.suptitle(f"dimensionality read at {self.hook}")
        fig.tight_layout()
        return fig

    def _stick_data(self, ax, i: int) -> None:
        dstar = self.max_data_dim[i].cpu()
        d = self.data_dim[i].cpu()
        order = torch.nan_to_num(dstar, nan=-1.0).argsort(descending=True)
        order = order[~torch.isnan(dstar[order])]
        x = torch.arange(len(order))
        ax.vlines(x, 0, dstar[order], color="C3", lw=1.2, label="max data dim D*")
        ax.plot(x, d[order], "o", ms=3, color="C0", label="data dim D")
        ax.set(
            xlabel="training point (sorted by D*)",
            ylabel="dimensions per point",
            title=f"inst {i}: data dimensionality",
            ylim=(0, max(1.05, float(dstar.nan_to_num(0).max()) * 1.05)),
        )
        ax.legend(fontsize=7)

    def _stick_features(self, ax, i: int) -> None:
        D = self.feature_dim[i].cpu()
        norms = self.W[i].norm(dim=0).cpu() if self.W is not None else None
        x = torch.arange(len(D))
        ax.vlines(x, 0, D, color="k", lw=1.5)
        ax.plot(x, D, "o", color="C2", ms=4)
        for k, (v, lab) in enumerate(FRACTIONS.items()):  # alternate sides: 2/5 and 3/8 are close
            ax.axhline(v, color="0.8", lw=0.6, ls="--")
            x_lab, ha = (len(D) - 0.5, "right") if k % 2 == 0 else (-0.5, "left")
            ax.text(x_lab, v, lab, fontsize=7, va="bottom", ha=ha, color="0.4")
        title = f"inst {i}: feature dimensionality"
        if norms is not None:
            title += f" (Σ={float(D.sum()):.2f})"
        ax.set(xlabel="feature index", ylabel="D_i", ylim=(0, 1.1), title=title)

    def _scatter(self, ax, i: int) -> None:
        h = self.hidden[i].cpu()
        ax.scatter(h[:, 0], h[:, 1], s=8, color="C0", alpha=0.6, label="training points h_j")
        if self.W is not None:
            W = self.W[i].cpu()
            for j in range(W.shape[1]):
                ax.plot([0, W[0, j]], [0, W[1, j]], color="C2", lw=1.2)
            ax.plot([], [], color="C2", label="feature directions W_i")
        ax.set_aspect("equal", adjustable="datalim")
        ax.set(xlabel="hidden dim 0", ylabel="hidden dim 1", title=f"inst {i}: hidden space")
        ax.legend(fontsize=7, loc="upper right")


class DimensionalityProbe(Probe):
    """Reads hidden vectors at ``hook`` (default: the model's ``representation_hook``, e.g. the
    bottleneck's ``hook_hidden``, the MLP block's ``hook_post``) for the training set and returns
    data dimensionality, D* (leverage scores) and, when the model has feature directions
    (``model.feature_directions()``, the Bottleneck's ``W``), feature dimensionality.

        with memlens.probing(model, "dimensionality", train=batch) as (dim,):
            model(batch.inputs)
        dim.result().max_data_dim        # [inst, T]

    Every forward pass inside the block is recorded and concatenated along the batch axis, so
    run exactly the training set (``Probe.run(model, train)`` does that in one call).
    """

    def __init__(self, hook: str | None = None, train: Tensor | Batch | None = None):
        if hook is not None and (not isinstance(hook, str) or not hook):
            raise ValueError(f"hook must be a hook name or None (the model's own), got {hook!r}")
        super().__init__(train=train)
        self.hook = hook
        self.hooks = () if hook is None else (hook,)

    def hook_names(self, model) -> list[str]:
        if self.hook is None:  # the model's representation hook (its bundle says which)
            self.hook = model.representation_hook
            self.hooks = (self.hook,)
        return super().hook_names(model)

    def hidden(self) -> Float[Tensor, "inst T m"]:
        acts = self.acts.get(self.hook)
        if not acts:
            raise ValueError(
                f"DimensionalityProbe saw no activations at {self.hook!r}: run a forward pass on "
                "the training set inside memlens.probing(), or use probe.run(model, train)"
            )
        a = torch.cat(acts, dim=0)  # [T, inst, ...]
        return a.flatten(2).transpose(0, 1)  # [inst, T, m]

    def result(self) -> DimensionalityResult:
        H = self.hidden()
        mask = None
        if isinstance(self.train, Batch) and self.train.lengths is not None:
            m = self.train.mask()
            if m is not None and m.shape[0] == H.shape[1]:
                mask = m.transpose(0, 1).bool().to(H.device)  # [inst, T]
                H = H * mask[..., None]
        D = data_dimensionality(H)
        Dstar = max_data_dimensionality(H)
        if mask is not None:
            D = D.masked_fill(~mask, float("nan"))
            Dstar = Dstar.masked_fill(~mask, float("nan"))
        W = self.model.feature_directions()
        fdim = dpf = None
        if isinstance(W, Tensor) and W.ndim == 3:
            W = W.detach()
            fdim = feature_dimensionality(W)
            dpf = dims_per_feature(W)
        else:
            W = None
        return DimensionalityResult(
            hook=self.hook,
            data_dim=D.cpu(),
            max_data_dim=Dstar.cpu(),
            feature_dim=None if fdim is None else fdim.cpu(),
            dims_per_feature=None if dpf is None else dpf.cpu(),
            hidden=H.detach().cpu(),
            W=None if W is None else W.cpu(),
        )
