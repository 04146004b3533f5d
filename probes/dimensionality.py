"""Feature dimensionality, data dimensionality and maximal data dimensionality (D*).

Definitions (background.md §3; Elhage et al. 2022, Henighan et al. 2023, Hobbhahn 2023):

* feature dimensionality ``D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)²`` for the columns ``W_i`` of ``W`` (m × n);
* dimensions per feature ``D* = m / ‖W‖_F²``;
* data dimensionality ``D_i = ‖h_i‖² / Σ_j (ĥ_i·h_j)²`` for the hidden vectors ``h_i`` (m dims);
* maximal data dimensionality ``D*_i = sup_v (v·h_i)² / Σ_j (v·h_j)² = h_iᵀ (HᵀH)⁺ h_i``, the
  statistical leverage score, so ``Σ_i D*_i = rank(H)``.

**Layouts.** Activations come in the hook layout ``[batch, inst, ...]``, exactly as a hook or
``cache["hook_hidden"]`` gives them; trailing axes are flattened into the m hidden dimensions.
Because ``[batch, inst, m]`` and the transposed ``[inst, batch, m]`` cannot be told apart by their
shapes, every function that takes activations also requires ``n_instances`` (keyword-only) and
refuses a tensor whose axis 1 does not match it; a 2-D ``[batch, m]`` tensor is refused with a
message saying to add the instance axis (``H[:, None]``). The one case no check can catch is
``batch == n_instances``. Weights keep the model's parameter layout: ``W`` is ``[inst, m, n]``.
Results are ``[inst, batch]`` per point and ``[inst, n]`` per feature, instances first.
A zero row / column gets dimensionality 0.

**Cost.** Every sum over j goes through the m × m Gram matrix ``G = HᵀH``
(``Σ_j (u·h_j)² = uᵀ G u``), so nothing materialises a T × T matrix. With ``G = V Λ Vᵀ`` and
``z = Vᵀh``, all three per-point quantities are weighted sums of ``z²``: ``‖h‖² = Σ z_k²``,
``hᵀGh = Σ λ_k z_k²`` and ``D* = Σ_{kept} z_k² / λ_k``. So D and D* together cost two passes
over H: one for G, one for ``z = Vᵀh``, each in cache-sized row chunks.

**Precision.** For float32 activations (and lower precision, computed in float32) G is summed in
float32 per chunk and the chunks are reduced in float64. Its error is ``δ·λ_max`` with δ about
1e-8 to 2e-7 (measured, T = 10³ to 10⁶), which perturbs D and D* by about ``δ·λ_max/λ_min``
relative. So this fast path is taken only when every eigenvalue is at least
``FAST_MIN_EIG_RATIO · λ_max`` (error ≲ 2e-4); otherwise (ill-conditioned or rank-deficient H,
including T < m, dead units, or values outside float32's comfortable range) G and the row pass
are recomputed in float64, which is exact enough for rank decisions. float64 input is computed in
float64 throughout.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from jaxtyping import Float, Real
from torch import Tensor

from memlens import validate
from memlens.data import Batch
from memlens.io import jsonable
from memlens.probe import Probe, ProbeResult

__all__ = [
    "feature_dimensionality",
    "dims_per_feature",
    "data_dimensionality",
    "max_data_dimensionality",
    "data_and_max_data_dimensionality",
    "compare_max_data_dim",
    "DimensionalityProbe",
    "DimensionalityResult",
]

#: elements per row chunk of ``[rows, inst, m]`` (2 MB of float32: the chunk and its products
#: stay in cache; the fastest of 2^15 to 2^21 at T = 10⁶, m = 16, 4 instances)
CHUNK_ELEMENTS = 1 << 19
#: the float32 Gram path is used only when every eigenvalue is at least this fraction of the
#: largest (see the module docstring); otherwise float64
FAST_MIN_EIG_RATIO = 1e-3
#: mean squared row norm range in which float32 products neither overflow nor lose precision
_F32_SAFE = (1e-30, 1e30)


# ------------------------------------------------------------------------------ checking input


def _check_n_instances(n_instances) -> None:
    if isinstance(n_instances, bool) or not isinstance(n_instances, int) or n_instances < 1:
        raise ValueError(
            f"n_instances must be a positive int (the model's instance count, axis 1 of "
            f"[batch, inst, ...]), got {n_instances!r}"
        )


def _activations(H, n_instances: int, name: str = "H") -> Tensor:
    """``H`` checked against the hook layout ``[batch, inst, ...]``; returns ``[T, inst, m]``."""
    if not isinstance(H, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(H).__name__}")
    _check_n_instances(n_instances)
    if H.ndim < 3:
        raise ValueError(
            f"{name} must be a hook activation of shape [batch, inst, ...] (e.g. "
            f"cache['hook_hidden'] as is), got shape {tuple(H.shape)}; for a single instance add "
            f"the instance axis: {name}[:, None]"
        )
    if H.shape[1] != n_instances:
        hint = ""
        if H.shape[0] == n_instances:
            hint = f"; it looks like the old [inst, batch, ...] layout: pass {name}.transpose(0, 1)"
        raise ValueError(
            f"{name} must have the hook layout [batch, inst, ...] with n_instances={n_instances} "
            f"on axis 1, got shape {tuple(H.shape)}{hint}"
        )
    H = H.flatten(2) if H.ndim > 3 else H
    if H.shape[2] == 0:
        raise ValueError(f"{name} has no hidden dimensions (shape {tuple(H.shape)})")
    return H if H.is_floating_point() else H.float()


def _weights(W, name: str = "W") -> Tensor:
    if not isinstance(W, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(W).__name__}")
    if W.ndim != 3:
        hint = f"; for a single instance add the instance axis: {name}[None]" if W.ndim == 2 else ""
        raise ValueError(
            f"{name} must have the model's parameter layout [inst, m, n], got shape "
            f"{tuple(W.shape)}{hint}"
        )
    validate.finite_tensor(name, W)  # weights are small: checked up front
    return W if W.is_floating_point() else W.float()


def _refuse_nonfinite(H: Tensor, name: str = "H") -> None:
    """Raise naming the first NaN/inf of ``H`` (``[T, inst, m]``). Called only once a non-finite
    Gram matrix showed there is one, so finite input pays nothing for the check."""
    validate.finite_tensor(name, H)
    raise ValueError(f"{name} contains NaN or inf; dimensionalities are undefined")


def _check_rtol(rtol) -> None:
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 <= rtol < 1:
        raise ValueError(f"rtol must be a number in [0, 1), got {rtol!r}")


# ---------------------------------------------------------------------------- the two passes


@dataclasses.dataclass
class _Spectrum:
    """Eigendecomposition of each instance's Gram matrix, and how to run the row pass."""

    evals: Tensor  # [inst, m] float64, ascending
    V: Tensor  # [inst, m, m] float64
    dtype: torch.dtype  # row-pass dtype
    scale: Tensor | None  # [inst]: rows are divided by it (extreme float64 magnitudes only)


def _chunks(H: Tensor, dtype: torch.dtype, scale: Tensor | None):
    """Row chunks of ``[T, inst, m]`` as ``[inst, rows, m]`` in ``dtype``."""
    rows = max(1, CHUNK_ELEMENTS // (H.shape[1] * H.shape[2]))
    for a in range(0, H.shape[0], rows):
        h = H[a : a + rows].transpose(0, 1).to(dtype)
        yield a, (h if scale is None else h / scale[:, None, None].to(dtype))


def _gram(H: Tensor, dtype: torch.dtype, scale: Tensor | None = None) -> Tensor:
    """Σ_t h_t h_tᵀ per instance: per chunk in ``dtype``, reduced over chunks in float64."""
    inst, m = H.shape[1:]
    G = torch.zeros(inst, m, m, dtype=torch.float64, device=H.device)
    for _, h in _chunks(H, dtype, scale):
        g = torch.bmm(h.transpose(1, 2), h)
        G += g if dtype == torch.float64 else g.double()
    return G


def _spectrum(H: Tensor) -> _Spectrum:
    """The fast float32 Gram where it is accurate enough, else float64 (module docstring)."""
    T = max(H.shape[0], 1)
    if H.dtype != torch.float64:
        G = _gram(H, torch.float32)
        if not bool(torch.isfinite(G).all()) and not bool(torch.isfinite(H).all()):
            _refuse_nonfinite(H)
        if bool(torch.isfinite(G).all()):
            evals, V = torch.linalg.eigh(G)
            lam_max = evals[:, -1]
            ms = G.diagonal(dim1=1, dim2=2).sum(-1) / T  # mean squared row norm
            ok = (
                (evals >= FAST_MIN_EIG_RATIO * lam_max[:, None]).all(-1)
                & (ms >= _F32_SAFE[0])  # also refuses G = 0: squares may have underflowed
                & (ms <= _F32_SAFE[1])
            )
            if bool(ok.all()):
                return _Spectrum(evals, V, torch.float32, None)
    scale = None
    G = _gram(H, torch.float64)
    small = G.diagonal(dim1=1, dim2=2).sum(-1) < 1e-250  # squares underflow (or H = 0)
    if not bool(torch.isfinite(G).all()) or bool(small.any()):
        if not bool(torch.isfinite(H).all()):
            _refuse_nonfinite(H)
        # magnitudes near float64's range: D and D* are scale-invariant, so rescale each instance
        amax = H.abs().amax(dim=(0, 2)).double()
        if not bool(torch.isfinite(G).all()) or bool((small & (amax > 0)).any()):
            scale = amax.clamp_min(torch.finfo(torch.float64).tiny)
            G = _gram(H, torch.float64, scale)
    evals, V = torch.linalg.eigh(G)
    return _Spectrum(evals, V, torch.float64, scale)


def _row_pass(H: Tensor, spec: _Spectrum, weights: Tensor, want_d: bool, want_dstar: bool):
    """The second pass: per point ``s = weightsᵀ (z ⊙ z)`` with ``z = Vᵀ h``, then
    ``D = s_0² / s_1`` and ``D* = s_last``, finished chunk by chunk while the chunk is in cache.

    ``Vᵀ [h_1 … h_rows]`` lets BLAS read the ``[rows, inst, m]`` chunk in place (as a transposed
    operand) instead of copying it."""
    inst = H.shape[1]
    out_dtype = H.dtype if H.dtype == torch.float64 else torch.float32
    D = torch.empty(inst, H.shape[0], dtype=out_dtype, device=H.device) if want_d else None
    Ds = torch.empty(inst, H.shape[0], dtype=out_dtype, device=H.device) if want_dstar else None
    Vt = spec.V.transpose(1, 2).to(spec.dtype).contiguous()
    Wt = weights.transpose(1, 2).to(spec.dtype).contiguous()  # [inst, k, m]
    tiny = torch.finfo(spec.dtype).tiny
    for a, h in _chunks(H, spec.dtype, spec.scale):
        s = torch.bmm(Wt, torch.bmm(Vt, h.transpose(1, 2)).square_())  # [inst, k, rows]
        b = a + h.shape[1]
        if want_d:  # ‖h‖² · (‖h‖² / hᵀGh): 0 for h = 0, no overflow for large ‖h‖
            D[:, a:b] = s[:, 0] * (s[:, 0] / s[:, 1].clamp_min(tiny))
        if want_dstar:
            Ds[:, a:b] = s[:, -1]
    return D, Ds


def _dims(H: Tensor, want_d: bool, want_dstar: bool, rtol: float | None):
    """Data dimensionality and/or D* of the rows of ``H`` ``[T, inst, m]``, each ``[inst, T]``."""
    m = H.shape[2]
    spec = _spectrum(H)
    evals = spec.evals
    cols = []
    if want_d:
        cols += [torch.ones_like(evals), evals.clamp_min(0)]
    if want_dstar:
        if rtol is None:
            rtol = 10 * m * torch.finfo(H.dtype if H.dtype == torch.float64 else torch.float32).eps
        lam_max = evals[:, -1:].clamp_min(0)
        keep = (evals > rtol**2 * lam_max) & (evals > 0)
        cols.append(torch.where(keep, 1 / evals.clamp_min(1e-300), torch.zeros_like(evals)))
    return _row_pass(H, spec, torch.stack(cols, -1), want_d, want_dstar)


# ------------------------------------------------------------------------------ public functions


def feature_dimensionality(W: Real[Tensor, "inst m n"]) -> Float[Tensor, "inst n"]:
    """``D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)²`` for each column (feature) of ``W`` ``[inst, m, n]``
    (the model's parameter layout); 0 for a zero column. Returns ``[inst, n]``."""
    W = _weights(W)
    D, _ = _dims(W.permute(2, 0, 1), True, False, None)  # features as rows
    return D


def dims_per_feature(W: Real[Tensor, "inst m n"]) -> Float[Tensor, " inst"]:
    """``D* = m / ‖W‖_F²`` ("dimensions per feature") for ``W`` ``[inst, m, n]``; inf for W = 0.
    Returns ``[inst]``."""
    W = _weights(W)
    out = W.shape[1] / W.double().square().sum((1, 2))
    return out.to(W.dtype)


def data_dimensionality(
    H: Real[Tensor, "batch inst *hidden"], *, n_instances: int
) -> Float[Tensor, "inst batch"]:
    """``D_i = ‖h_i‖² / Σ_j (ĥ_i·h_j)²`` for each point of ``H`` in the hook layout
    ``[batch, inst, ...]`` (e.g. ``cache["hook_hidden"]``); 0 for a zero row. ``n_instances`` must
    match axis 1 (see the module docstring). Returns ``[inst, batch]``."""
    H = _activations(H, n_instances)
    D, _ = _dims(H, True, False, None)
    return D


def max_data_dimensionality(
    H: Real[Tensor, "batch inst *hidden"], *, n_instances: int, rtol: float | None = None
) -> Float[Tensor, "inst batch"]:
    """Maximal data dimensionality ``D*_i = h_iᵀ (HᵀH)⁺ h_i`` (the leverage score of point i) for
    ``H`` in the hook layout ``[batch, inst, ...]``. Returns ``[inst, batch]``.

    The pseudo-inverse comes from an eigendecomposition of the m × m Gram matrix in float64.
    Singular values below ``rtol · σ_max`` count as zero (default ``10 · m · eps``, eps of float64
    for float64 H, else of float32),
    so a rank-deficient H is handled and ``Σ_i D*_i = rank(H)``.
    """
    H = _activations(H, n_instances)
    if rtol is not None:
        _check_rtol(rtol)
    _, Dstar = _dims(H, False, True, rtol)
    return Dstar


def data_and_max_data_dimensionality(
    H: Real[Tensor, "batch inst *hidden"], *, n_instances: int, rtol: float | None = None
) -> tuple[Float[Tensor, "inst batch"], Float[Tensor, "inst batch"]]:
    """Data dimensionality and D* together (one Gram matrix, one row pass: about the cost of
    either alone). Same layout and arguments as :func:`max_data_dimensionality`."""
    H = _activations(H, n_instances)
    if rtol is not None:
        _check_rtol(rtol)
    return _dims(H, True, True, rtol)


# ------------------------------------------------------------------------------------ the probe


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

    Fields (results are instances first; activations keep the hook layout):
        hook: where the hidden vectors were read.
        data_dim, max_data_dim: ``[inst, T]``.
        feature_dim: ``[inst, feat]`` from the model's feature directions (a Bottleneck's ``W``),
            else None.
        dims_per_feature: ``[inst]`` m / ‖W‖_F², else None.
        hidden: ``[T, inst, m]`` the hidden vectors, in the hook layout (kept for plots).
        W: ``[inst, m, n]`` the feature directions, or None.
    """

    hook: str
    data_dim: Float[Tensor, "inst T"]
    max_data_dim: Float[Tensor, "inst T"]
    feature_dim: Float[Tensor, "inst feat"] | None = None
    dims_per_feature: Float[Tensor, " inst"] | None = None
    hidden: Float[Tensor, "T inst m"] | None = dataclasses.field(default=None, repr=False)
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

    def rank(self) -> Tensor:
        """``[inst]``: Σ_i D*_i, the rank of each instance's hidden vectors."""
        return self.max_data_dim.nansum(-1)

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

    def plot(self, ax=None, instances: list[int] | None = None, top: int = 3):
        """Per instance: D* of every training point, sorted, on a log axis with the mean
        rank/T marked and the ``top`` points labelled; the feature dimensionalities when known;
        for m = 2 the hidden vectors with the feature directions. With ``ax`` given, draws only
        the D* panel of instance 0 (or ``instances[0]``) there."""
        from probes.dimensionality_plots import plot_result

        return plot_result(self, ax=ax, instances=instances, top=top)


def compare_max_data_dim(results, labels, instance: int | list[int] = 0, ax=None):
    """One figure comparing D* per point across results (e.g. a memorising and a generalising
    model): sorted D* curves and the distribution of log D*, each with its rank/T reference.
    See :func:`probes.dimensionality_plots.compare_max_data_dim`."""
    from probes.dimensionality_plots import compare_max_data_dim as compare

    return compare(results, labels, instance=instance, ax=ax)


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

    default = True  # registration metadata: a sweep runs it when none are named, on every model

    @classmethod
    def sweep_report(cls, view, label):
        from probes.sweep_curves import dimensionality_section

        return dimensionality_section(view, label)

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

    def hidden(self) -> Float[Tensor, "T inst m"]:
        """The recorded activations, ``[T, inst, m]`` (the hook layout, trailing axes flattened)."""
        acts = self.acts.get(self.hook)
        if not acts:
            raise ValueError(
                f"DimensionalityProbe saw no activations at {self.hook!r}: run a forward pass on "
                "the training set inside memlens.probing(), or use probe.run(model, train)"
            )
        a = acts[0] if len(acts) == 1 else torch.cat(acts, dim=0)
        return a.flatten(2)

    def result(self) -> DimensionalityResult:
        H = self.hidden()
        mask = None
        if isinstance(self.train, Batch) and self.train.lengths is not None:
            m = self.train.mask()
            if m is not None and m.shape[0] == H.shape[0]:
                mask = m.bool().to(H.device)  # [T, inst]
                H = H * mask[..., None]
        D, Dstar = data_and_max_data_dimensionality(H, n_instances=self.model.n_instances)
        if mask is not None:
            D = D.masked_fill(~mask.T, float("nan"))
            Dstar = Dstar.masked_fill(~mask.T, float("nan"))
        # feature directions live in the representation space: at any other hook they would
        # describe a different space, so the feature measures are left out there
        at_rep = self.hook == self.model.representation_hook
        W = self.model.feature_directions() if at_rep else None
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
