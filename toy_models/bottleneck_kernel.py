"""The bottleneck's fused training step: a C++ kernel that keeps the sparse input sparse.

For ``h = W x``, ``out = ReLU(Dᵀ h + b)`` and ``loss_i = mean_t Σ_f I_f (out - x)²`` (D = Wᵀ
when tied), one pass over row tiles gives every instance's loss and the gradients of their sum:

* the input is read only at its active entries (about 10 of 1,000 features at S = 0.99), kept in
  CSR form (:class:`SparseRows`): the encoder ``h = W x`` and its gradient ``gW += gh xᵀ`` touch
  active entries only, and the training set is converted once per run, not once per step;
* the decoder, ReLU, loss and their gradients are dense (every output feature) and run over 8
  features at a time with the gradient sums in registers, on a tile of rows whose scattered
  input (a few KB) stays in cache;
* work items are (instance, row range); each writes its own gradient slot, summed per instance at
  the end, so the result does not depend on the thread count's scheduling.

Padded packed batches (``Batch.lengths``) use only each instance's first ``lengths[i]`` rows, as
``Bottleneck.loss`` does. The kernel is built once per machine by :mod:`memlens.native`.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from memlens import native
from memlens.data import Batch
from memlens.fused import DerivedCache, row_counts

__all__ = [
    "SparseRows",
    "to_sparse_rows",
    "take_rows",
    "loss_and_grads",
    "MAX_HIDDEN",
    "SOURCE_FILE",
]

MAX_HIDDEN = 64  # the kernel's register arrays; wider bottlenecks train eagerly

SOURCE_FILE = Path(__file__).with_name("kernels") / "bottleneck.cpp"

_P, _L, _I = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SIGNATURES = {
    "ml_csr_count": [_P, _L, _L, _L, _P, _I],
    "ml_csr_fill": [_P, _L, _L, _L, _P, _P, _P, _I],
    "ml_csr_take": [_P, _P, _P, _L, _L, _P, _L, _P, _P, _P, _I],
    "ml_bottleneck_step": [_L, _L, _L, _L, _P, _P, _P, _P, _P, _P, _P, _P, _I]
    + [_P, _P, _P, _P, _I],
}


def _library() -> ctypes.CDLL | None:
    return native.load_kernel("memlens_bottleneck", SOURCE_FILE, _SIGNATURES)


def _ptr(t: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


@dataclass
class SparseRows:
    """Rows ``(i, t)`` of a ``[T, inst, n]`` tensor in CSR form: row ``i * T + t`` holds entries
    ``row_ptr[r] : row_ptr[r + 1]`` of ``col`` (feature index) and ``val`` (its value)."""

    T: int
    n_instances: int
    n_features: int
    row_ptr: Tensor  # int64 [inst * T + 1]
    col: Tensor  # int32 [nnz]
    val: Tensor  # float32 [nnz]


def to_sparse_rows(x: Tensor) -> SparseRows:
    """The nonzero entries of a float32 CPU tensor ``[T, inst, n]`` (NaN counts as nonzero)."""
    lib = _library()
    if lib is None:
        raise RuntimeError("the bottleneck kernel is not available (see memlens.native)")
    x = x.contiguous()
    T, inst, n = x.shape
    threads = torch.get_num_threads()
    nnz = torch.empty(inst * T, dtype=torch.long)
    lib.ml_csr_count(_ptr(x), T, inst, n, _ptr(nnz), threads)
    row_ptr = torch.zeros(inst * T + 1, dtype=torch.long)
    torch.cumsum(nnz, 0, out=row_ptr[1:])
    total = int(row_ptr[-1])
    col, val = torch.empty(total, dtype=torch.int32), torch.empty(total)
    lib.ml_csr_fill(_ptr(x), T, inst, n, _ptr(row_ptr), _ptr(col), _ptr(val), threads)
    return SparseRows(T, inst, n, row_ptr, col, val)


def take_rows(sp: SparseRows, rows: Tensor) -> SparseRows:
    """Rows ``rows[:, i]`` (``[B, inst]``, each in [0, T)) of instance ``i``, for every instance."""
    lib = _library()
    rows = rows.to("cpu", torch.long).contiguous()
    if rows.ndim != 2 or rows.shape[1] != sp.n_instances:
        raise ValueError(f"rows must be [B, inst={sp.n_instances}], got {tuple(rows.shape)}")
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= sp.T):
        raise ValueError(
            f"rows must be in [0, T={sp.T}), got values in [{int(rows.min())}, {int(rows.max())}]"
        )
    B, inst = rows.shape
    src = rows.t() + torch.arange(inst)[:, None] * sp.T  # [inst, B], CSR row of each pick
    counts = (sp.row_ptr[src + 1] - sp.row_ptr[src]).flatten()
    out_ptr = torch.zeros(inst * B + 1, dtype=torch.long)
    torch.cumsum(counts, 0, out=out_ptr[1:])
    total = int(out_ptr[-1])
    col, val = torch.empty(total, dtype=torch.int32), torch.empty(total)
    lib.ml_csr_take(
        _ptr(sp.row_ptr), _ptr(sp.col), _ptr(sp.val), sp.T, inst, _ptr(rows), B,
        _ptr(out_ptr), _ptr(col), _ptr(val), torch.get_num_threads(),
    )  # fmt: skip
    return SparseRows(B, inst, sp.n_features, out_ptr, col, val)


_sparse_inputs = DerivedCache()


def loss_and_grads(model, batch: Batch, rows: Tensor | None = None):
    """``(losses [inst], {parameter name: gradient})`` of a ``Bottleneck`` on ``batch`` (or on
    ``batch.gather(rows)``), or None where the kernel does not apply (then train eagerly)."""
    cfg = model.cfg
    x = batch.inputs
    if (
        (batch.targets is not None and batch.targets is not x)
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or cfg.d_hidden > MAX_HIDDEN
    ):
        return None
    lib = _library()
    if lib is None:
        return None
    if rows is not None:
        full = _sparse_inputs.get(x, lambda: to_sparse_rows(x))
        sp = take_rows(full, rows)
        lengths = torch.full((model.n_instances,), rows.shape[0], dtype=torch.long)
    else:
        sp = _sparse_inputs.get(x, lambda: to_sparse_rows(x))
        lengths = row_counts(batch)
    W = model.W.detach().contiguous()
    Dt = W if cfg.tied else model.W_dec.detach().transpose(1, 2).contiguous()
    b = model.b.detach().contiguous()
    imp = model.importance.detach().to(torch.float32).contiguous()
    inst, n, m = model.n_instances, cfg.n_features, cfg.d_hidden
    loss = torch.empty(inst, dtype=torch.float64)
    gW, gb = torch.empty_like(W), torch.empty_like(b)
    gDt = gW if cfg.tied else torch.empty_like(Dt)
    lib.ml_bottleneck_step(
        inst, sp.T, n, m, _ptr(lengths), _ptr(sp.row_ptr), _ptr(sp.col), _ptr(sp.val),
        _ptr(W), _ptr(Dt), _ptr(b), _ptr(imp), int(cfg.tied),
        _ptr(loss), _ptr(gW), _ptr(gDt), _ptr(gb), torch.get_num_threads(),
    )  # fmt: skip
    grads = {"W": gW, "b": gb}
    if not cfg.tied:
        grads["W_dec"] = gDt.transpose(1, 2).contiguous()
    return loss.to(torch.float32), grads
