"""The bottleneck's fused SGLD steps: a C++ kernel (``kernels/bottleneck_sgld.cpp``) that advances
``K`` steps of every sampler row at once, each row on its own thread, reading the sparse training
set at its active entries. :meth:`Bottleneck.sgld_kernel` returns a :class:`BottleneckSGLD`; the
sampler reaches it through :mod:`memlens.sampling.fused_sgld`, which defines the contract.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch
from torch import Tensor

from memlens import native
from memlens.data import Batch
from memlens.fused import DerivedCache, row_counts
from toy_models.bottleneck_kernel import MAX_HIDDEN, SparseRows, to_sparse_rows

__all__ = ["BottleneckSGLD", "sgld_kernel", "SOURCE_FILE"]

SOURCE_FILE = Path(__file__).with_name("kernels") / "bottleneck_sgld.cpp"

_P, _L, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
_SIGNATURES = {
    "ml_bottleneck_sgld": [_L, _L, _L, _L, _L, _I, _P, _P, _P, _P, _L, _P, _P]
    + [_P, _P, _P, _P, _P, _F, _P, _P, _I, _P, _L, _P, _L],
    "ml_bottleneck_losses": [_L, _L, _L, _L, _I, _P, _P, _P, _P, _P, _P, _P, _I],
}

_flat_inputs = DerivedCache()
_flat_eval = DerivedCache()


def _flat_csr(x: Tensor):
    """CSR over the rows of the flattened ``[T * inst, n]`` set: row ``t * inst + i`` is ``(t, i)``,
    the numbering of the sampler's minibatch indices (``col`` and ``val`` padded by 8 entries)."""
    T, inst, n = x.shape
    sp = to_sparse_rows(x.reshape(T * inst, 1, n))
    # the kernel copies a row's entries 8 at a time: 8 readable entries past the end
    col = torch.cat([sp.col, torch.zeros(8, dtype=sp.col.dtype)])
    val = torch.cat([sp.val, torch.zeros(8, dtype=sp.val.dtype)])
    return SparseRows(sp.T, sp.n_instances, sp.n_features, sp.row_ptr, col, val)


def _library() -> ctypes.CDLL | None:
    return native.load_kernel("memlens_bottleneck_sgld", SOURCE_FILE, _SIGNATURES)


def _ptr(t: Tensor | None) -> ctypes.c_void_p | None:
    return None if t is None else ctypes.c_void_p(t.data_ptr())


class BottleneckSGLD:
    """Fused SGLD for copies of one ``Bottleneck``'s instances on one training set: call
    :meth:`advance` (see :class:`memlens.sampling.fused_sgld.SGLDKernel`)."""

    def __init__(self, model, data: Batch, batch_size: int | None, lib: ctypes.CDLL):
        cfg = model.cfg
        x = data.inputs
        T, inst, n = x.shape
        self.sp = _flat_inputs.get(x, lambda: _flat_csr(x))
        self.lengths = row_counts(data).contiguous()
        self.T = T
        self.imp = model.importance.detach().to(torch.float32).contiguous()
        self.inst, self.n, self.m, self.tied = inst, n, cfg.d_hidden, bool(cfg.tied)
        self.batch_size = batch_size
        self.n_params = (1 if self.tied else 2) * self.m * n + n
        self.lib = lib
        self._bound = None  # (tensors, fixed arguments) of the last run

    def advance(self, W: Tensor, W0: Tensor, M: Tensor | None, eps: Tensor, nbeta: Tensor,
                gamma: float, noise: Tensor, idx: Tensor | tuple | None) -> Tensor:  # fmt: skip
        """``K = noise.shape[0]`` steps on every row of ``W`` in place; the losses ``[K, E]``."""
        E, P = W.shape
        K = noise.shape[0]
        noise = noise.reshape(K, E, P)
        picks, s0 = None, 0
        if isinstance(idx, tuple):  # (MinibatchRows, first step): the kernel picks the rows
            picks, s0 = idx
            if picks.keys32.shape != (E // self.inst, 2) or picks.n_points.numel() != self.inst:
                raise ValueError("the minibatch keys do not match the rows of W")
            idx = None
        if idx is not None:
            idx = idx.reshape(K, E, self.batch_size)
        if not noise.is_contiguous() or not (idx is None or idx.is_contiguous()):
            raise ValueError("the fused SGLD kernel needs contiguous noise and indices")
        threads = torch.get_num_threads()
        key = (W, W0, M, eps, nbeta, float(gamma), threads)
        if self._bound is None or any(a is not b for a, b in zip(self._bound[0], key, strict=True)):
            self._bound = (key, self._fixed_args(W, W0, M, eps, nbeta))
        losses = torch.empty(K, E)
        head, tail = self._bound[1]
        keys, npts = (None, None) if picks is None else (picks.keys32, picks.n_points)
        self.lib.ml_bottleneck_sgld(
            K, *head, _ptr(idx), *tail, float(gamma), _ptr(noise), _ptr(losses), threads,
            _ptr(keys), int(s0), _ptr(npts), self.T,
        )  # fmt: skip
        return losses

    def _fixed_args(self, W, W0, M, eps, nbeta) -> tuple[tuple, tuple]:
        """The kernel's arguments that stay fixed over a run (checked once)."""
        E, P = W.shape
        if P != self.n_params or E % self.inst:
            raise ValueError(f"W must be [copies * {self.inst}, {self.n_params}], got {(E, P)}")
        for t in (W, W0, M, eps, nbeta):
            if t is not None and not t.is_contiguous():
                raise ValueError("the fused SGLD kernel needs contiguous tensors")
        sp = self.sp
        head = (E, self.inst, self.n, self.m, int(self.tied), _ptr(sp.row_ptr), _ptr(sp.col))
        head = (*head, _ptr(sp.val))
        tail = (self.batch_size or 0, _ptr(self.lengths), _ptr(self.imp), _ptr(W), _ptr(W0))
        tail = (*tail, _ptr(M), _ptr(eps), _ptr(nbeta))
        return head, tail

    def losses(self, W: Tensor, batch: Batch) -> Tensor | None:
        """Each row's loss ``[E]`` on ``batch`` (an evaluation set of this model's instances), no
        update; None where the kernel cannot read ``batch`` (then evaluate eagerly)."""
        x = batch.inputs
        if (
            (batch.targets is not None and batch.targets is not x)
            or x.device.type != "cpu"
            or x.dtype != torch.float32
            or x.ndim != 3
            or x.shape[1:] != (self.inst, self.n)
        ):
            return None
        E, P = W.shape
        if P != self.n_params or E % self.inst or not W.is_contiguous():
            raise ValueError(f"W must be a contiguous [copies * {self.inst}, {self.n_params}]")
        sp = _flat_eval.get(x, lambda: _flat_csr(x))
        lengths = row_counts(batch).contiguous()
        out = torch.empty(E)
        self.lib.ml_bottleneck_losses(
            E, self.inst, self.n, self.m, int(self.tied), _ptr(sp.row_ptr), _ptr(sp.col),
            _ptr(sp.val), _ptr(lengths), _ptr(self.imp), _ptr(W), _ptr(out),
            torch.get_num_threads(),
        )  # fmt: skip
        return out


def sgld_kernel(model, data: Batch, batch_size: int | None) -> BottleneckSGLD | None:
    """The fused SGLD steps for ``model`` on ``data``, or None where the kernel does not apply
    (targets other than the inputs, not float32 on the CPU, a hidden layer over ``MAX_HIDDEN``,
    or no compiler)."""
    x = data.inputs
    if (
        (data.targets is not None and data.targets is not x)
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or x.ndim != 3
        or model.cfg.d_hidden > MAX_HIDDEN
    ):
        return None
    lib = _library()
    if lib is None:
        return None
    return BottleneckSGLD(model, data, batch_size, lib)
