"""The final layer's fused training step: a C++ kernel for logits, softmax cross-entropy and
their gradients in one pass over row tiles.

Per row of an instance: ``z = W_U r + b_U`` (4 rows x 16 logits per register tile), the
softmax with one vectorised exp per logit (a Cephes polynomial, about 2 ulp; 0 below e^-87.3),
``loss += logsumexp z - z_y``, ``g = softmax z - onehot y``, and ``gW_U += g rᵀ`` (4 features x
16 logits per tile), ``gb_U += g``. Work items are (instance, row range) with their own gradient
slots, summed per instance at the end. Padded packed batches use each instance's first
``lengths[i]`` rows. Built once per machine by :mod:`memlens.native`; without a compiler,
``Unembed`` uses its blocked torch step instead.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch
from torch import Tensor

from memlens import native

__all__ = ["SOURCE_FILE", "loss_and_grads"]

SOURCE_FILE = Path(__file__).with_name("kernels") / "unembed.cpp"

_P, _L, _I = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SIGNATURES = {"ml_unembed_step": [_L, _L, _L, _L, _P, _P, _P, _P, _P, _P, _P, _P, _I]}


def _library() -> ctypes.CDLL | None:
    return native.load_kernel("memlens_unembed", SOURCE_FILE, _SIGNATURES)


def _ptr(t: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def loss_and_grads(
    rI: Tensor, yI: Tensor, counts: Tensor, W_U: Tensor, b_U: Tensor
) -> tuple[Tensor, dict[str, Tensor]] | None:
    """Losses ``[inst]`` and gradients from instance-major inputs ``rI [inst, T, d]`` (float32)
    and labels ``yI [inst, T]``, using each instance's first ``counts[i]`` rows; None when the
    kernel is unavailable or a label is outside ``[0, d_vocab)`` (then the caller steps another
    way, and the eager path reports the bad label)."""
    lib = _library()
    if lib is None:
        return None
    inst, T, d = rI.shape
    V = W_U.shape[1]
    yI = yI.to(torch.long).contiguous()
    if yI.numel() and (int(yI.min()) < 0 or int(yI.max()) >= V):
        return None
    rI, W, b = rI.contiguous(), W_U.detach().contiguous(), b_U.detach().contiguous()
    counts = counts.to(torch.long).contiguous()
    loss = torch.empty(inst, dtype=torch.float64)
    gW, gb = torch.empty_like(W), torch.empty_like(b)
    lib.ml_unembed_step(
        inst, T, d, V, _ptr(counts), _ptr(rI), _ptr(yI), _ptr(W), _ptr(b),
        _ptr(loss), _ptr(gW), _ptr(gb), torch.get_num_threads(),
    )  # fmt: skip
    return loss.to(torch.float32), {"W_U": gW, "b_U": gb}
