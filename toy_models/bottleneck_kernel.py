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

import torch
from torch import Tensor

from memlens import native
from memlens.data import Batch
from memlens.fused import DerivedCache, row_counts

__all__ = ["SparseRows", "to_sparse_rows", "take_rows", "loss_and_grads", "MAX_HIDDEN", "SOURCE"]

MAX_HIDDEN = 64  # the kernel's register arrays; wider bottlenecks train eagerly

SOURCE = r"""
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>
#ifdef __AVX__
#include <immintrin.h>
#endif

#define ML_MAX_HIDDEN 64
#define ML_TILE 65536  // floats in a tile of scattered input (256 KB)

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));

static inline v8 ld(const float* p) { return *reinterpret_cast<const v8u*>(p); }
static inline void st(float* p, v8 v) { *reinterpret_cast<v8u*>(p) = v; }
// max(0, p), keeping NaN as torch.relu does (vmaxps returns its second operand on NaN)
static inline v8 relu(v8 p) {
#ifdef __AVX__
  return (v8)_mm256_max_ps(_mm256_setzero_ps(), (__m256)p);
#else
  const v8 z = {};
  return p < z ? z : p;
#endif
}
// e where p > 0, else 0: the ReLU's gradient (0 at p == 0 and at NaN, as in torch)
static inline v8 where_pos(v8 p, v8 e) {
#ifdef __AVX__
  return (v8)_mm256_and_ps(_mm256_cmp_ps((__m256)p, _mm256_setzero_ps(), _CMP_GT_OQ),
                           (__m256)e);
#else
  const v8 z = {};
  return p > z ? e : z;
#endif
}
static inline double hsum(v8 v) {
  double s = 0;
  for (int k = 0; k < 8; k++) s += v[k];
  return s;
}

// ------------------------------------------------------------- dense [T, I, n] -> CSR (i, t)
extern "C" void ml_csr_count(const float* x, int64_t T, int64_t I, int64_t n, int64_t* nnz,
                             int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads) if (T * I * n > 262144)
  for (int64_t t = 0; t < T; t++)
    for (int64_t i = 0; i < I; i++) {
      const float* r = x + (t * I + i) * n;
      int64_t c = 0;
      for (int64_t f = 0; f < n; f++) c += r[f] != 0.0f;  // NaN counts: it must propagate
      nnz[i * T + t] = c;
    }
}

extern "C" void ml_csr_fill(const float* x, int64_t T, int64_t I, int64_t n,
                            const int64_t* row_ptr, int32_t* col, float* val, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads) if (T * I * n > 262144)
  for (int64_t t = 0; t < T; t++)
    for (int64_t i = 0; i < I; i++) {
      const float* r = x + (t * I + i) * n;
      int64_t p = row_ptr[i * T + t], f = 0;
#ifdef __AVX__
      for (; f + 8 <= n; f += 8) {
        const __m256 v = _mm256_loadu_ps(r + f);
        int mask = _mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_NEQ_UQ));
        while (mask) {
          const int k = __builtin_ctz(mask);
          mask &= mask - 1;
          col[p] = (int32_t)(f + k);
          val[p++] = r[f + k];
        }
      }
#endif
      for (; f < n; f++)
        if (r[f] != 0.0f) {
          col[p] = (int32_t)f;
          val[p++] = r[f];
        }
    }
}

// rows[b * I + i] of instance i, for b < B, into a CSR over (i, b)
extern "C" void ml_csr_take(const int64_t* row_ptr, const int32_t* col, const float* val,
                            int64_t T, int64_t I, const int64_t* rows, int64_t B,
                            const int64_t* out_ptr, int32_t* out_col, float* out_val,
                            int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads) if (B * I > 4096)
  for (int64_t i = 0; i < I; i++)
    for (int64_t b = 0; b < B; b++) {
      const int64_t r = i * T + rows[b * I + i], s = row_ptr[r], e = row_ptr[r + 1];
      const int64_t o = out_ptr[i * B + b];
      std::memcpy(out_col + o, col + s, (e - s) * sizeof(int32_t));
      std::memcpy(out_val + o, val + s, (e - s) * sizeof(float));
    }
}

// ------------------------------------------------------------- the step
struct Item {
  int64_t inst, r0, r1;
};

// One block of 8 features over the rows of a tile, the gradient sums in registers. MM > 0 fixes
// M at compile time; UNIFORM: every importance is 1.
template <int MM, bool UNIFORM>
static inline void dense_block(int M_rt, int rows, const float* Dp, const float* bp,
                               const float* Ip, const float* h, const float* xb, v8* ghv,
                               float* gDp, float* gbp, int64_t n8, double& loss) {
  constexpr int CAP = MM > 0 ? MM : ML_MAX_HIDDEN;
  const int M = MM > 0 ? MM : M_rt;
  const v8 z = {};
  v8 D[CAP], gD[CAP];
  for (int j = 0; j < M; j++) {
    D[j] = ld(Dp + (int64_t)j * n8);
    gD[j] = z;
  }
  const v8 bv = ld(bp), Iv = ld(Ip);
  v8 gb = z, ls = z;
  for (int t = 0; t < rows; t++) {
    const float* ht = h + (int64_t)t * M;
    v8 p = bv;
    for (int j = 0; j < M; j++) p += D[j] * ht[j];
    const v8 d = relu(p) - ld(xb + 8 * t);
    const v8 e = UNIFORM ? d : Iv * d;
    ls += d * e;
    const v8 g = where_pos(p, e);
    gb += g;
    v8* gh = ghv + (int64_t)t * M;
    for (int j = 0; j < M; j++) {
      gD[j] += g * ht[j];
      gh[j] += g * D[j];
    }
  }
  for (int j = 0; j < M; j++) {
    float* q = gDp + (int64_t)j * n8;
    st(q, ld(q) + gD[j]);
  }
  st(gbp, ld(gbp) + gb);
  loss += hsum(ls);
}

template <int MM, bool UNIFORM>
static void run_item(const Item& it, int M_rt, int64_t T, int64_t n, int n8, int RT,
                     const int64_t* row_ptr, const int32_t* __restrict__ col,
                     const float* __restrict__ val, const float* __restrict__ W,
                     const float* Dp, const float* bp, const float* Ip,
                     float* __restrict__ gE, float* gD, float* gb, double* loss_out) {
  constexpr int CAP = MM > 0 ? MM : ML_MAX_HIDDEN;
  const int M = MM > 0 ? MM : M_rt;
  std::vector<float> xt_((size_t)RT * n8, 0.0f), h_((size_t)RT * M);
  std::vector<v8> ghv((size_t)RT * M);
  float* __restrict__ xt = xt_.data();  // the tile's input, [n8 / 8][RT][8]
  float* __restrict__ h = h_.data();
  const int64_t i = it.inst;
  const float* __restrict__ Wi = W + i * M * n;
  double loss = 0;
  for (int64_t t0 = it.r0; t0 < it.r1; t0 += RT) {
    const int rows = (int)std::min<int64_t>(RT, it.r1 - t0);
    const int64_t* rp = row_ptr + i * T + t0;
    // encoder on the active entries, h_t = sum_f W[:, f] x_tf; scatter x_t into the tile
    for (int r = 0; r < rows; r++) {
      float acc[CAP];
      for (int j = 0; j < M; j++) acc[j] = 0.0f;
      for (int64_t p = rp[r]; p < rp[r + 1]; p++) {
        const int32_t f = col[p];
        const float v = val[p];
        xt[(size_t)(f >> 3) * RT * 8 + r * 8 + (f & 7)] = v;
        for (int j = 0; j < M; j++) acc[j] += Wi[(int64_t)j * n + f] * v;
      }
      for (int j = 0; j < M; j++) h[(size_t)r * M + j] = acc[j];
    }
    std::fill(ghv.begin(), ghv.end(), v8{});
    for (int f = 0; f < n8; f += 8)
      dense_block<MM, UNIFORM>(M, rows, Dp + f, bp + f, Ip + f, h, xt + (size_t)f * RT,
                               ghv.data(), gD + f, gb + f, n8, loss);
    // encoder gradient on the active entries, gE[:, f] += gh_t x_tf; clear the tile
    for (int r = 0; r < rows; r++) {
      float g[CAP];
      for (int j = 0; j < M; j++) g[j] = (float)hsum(ghv[(size_t)r * M + j]);
      for (int64_t p = rp[r]; p < rp[r + 1]; p++) {
        const int32_t f = col[p];
        const float v = val[p];
        xt[(size_t)(f >> 3) * RT * 8 + r * 8 + (f & 7)] = 0.0f;
        for (int j = 0; j < M; j++) gE[(int64_t)j * n8 + f] += g[j] * v;
      }
    }
  }
  *loss_out = loss;
}

// Losses (mean over each instance's first lengths[i] rows) and the gradients of their sum.
extern "C" void ml_bottleneck_step(int64_t I, int64_t T, int64_t n, int64_t M,
                                   const int64_t* lengths, const int64_t* row_ptr,
                                   const int32_t* col, const float* val, const float* W,
                                   const float* Dt, const float* b, const float* imp, int tied,
                                   double* loss, float* gW, float* gDt, float* gb,
                                   int nthreads) {
  const int n8 = (int)((n + 7) / 8 * 8);
  const int RT = (int)std::max<int64_t>(8, std::min<int64_t>(256, ML_TILE / n8));
  // padded per-instance decoder, bias and importance (zeros beyond n contribute nothing)
  const size_t per = (size_t)(M + 2) * n8;
  std::vector<float> pad((size_t)I * per, 0.0f);
  bool uniform = true;
  for (int64_t i = 0; i < I; i++) {
    float* q = pad.data() + i * per;
    for (int64_t j = 0; j < M; j++)
      std::memcpy(q + j * n8, Dt + (i * M + j) * n, n * sizeof(float));
    std::memcpy(q + M * n8, b + i * n, n * sizeof(float));
    std::memcpy(q + (M + 1) * n8, imp + i * n, n * sizeof(float));
    for (int64_t f = 0; f < n && uniform; f++) uniform = imp[i * n + f] == 1.0f;
  }
  // work items: split each instance's rows so that every thread gets several items
  const int64_t want = std::max<int64_t>(1, (4 * (int64_t)nthreads + I - 1) / I);
  std::vector<Item> items;
  std::vector<int64_t> first(I + 1);
  for (int64_t i = 0; i < I; i++) {
    const int64_t L = std::min<int64_t>(std::max<int64_t>(lengths[i], 0), T);
    const int64_t c = std::max<int64_t>(1, std::min<int64_t>(want, L / 64));
    first[i] = (int64_t)items.size();
    for (int64_t k = 0; k < c; k++) items.push_back({i, L * k / c, L * (k + 1) / c});
  }
  const int64_t nI = (int64_t)items.size();
  first[I] = nI;
  const size_t slot = (size_t)(tied ? M + 1 : 2 * M + 1) * n8;
  std::vector<float> acc((size_t)nI * slot, 0.0f);
  std::vector<double> lacc(nI, 0.0);
  const bool par = nthreads > 1 && I * T * n > 65536;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (par)
  for (int64_t k = 0; k < nI; k++) {
    const Item& it = items[k];
    const float* q = pad.data() + it.inst * per;
    float* a = acc.data() + k * slot;
    float* gE = tied ? a : a + (M + 1) * n8;  // tied: encoder and decoder gradients add up
#define ML_RUN(MV)                                                                   \
  (uniform ? run_item<MV, true> : run_item<MV, false>)(it, (int)M, T, n, n8, RT,      \
                                                       row_ptr, col, val, W, q,       \
                                                       q + M * n8, q + (M + 1) * n8,  \
                                                       gE, a, a + M * n8, &lacc[k])
    switch (M) {  // widths with code of their own; others share the runtime-width loop
      case 1: ML_RUN(1); break;
      case 2: ML_RUN(2); break;
      case 3: ML_RUN(3); break;
      case 4: ML_RUN(4); break;
      default: ML_RUN(0); break;
    }
#undef ML_RUN
  }
  // sum each instance's slots; scale by 1/N (loss) and 2/N (gradients); drop the padding
#pragma omp parallel for schedule(static) num_threads(nthreads) if (par)
  for (int64_t i = 0; i < I; i++) {
    const int64_t L = std::min<int64_t>(std::max<int64_t>(lengths[i], 0), T);
    const double N = (double)std::max<int64_t>(L, 1);
    const float s = (float)(2.0 / N);
    double l = 0;
    std::vector<float> sum(slot, 0.0f);
    for (int64_t k = first[i]; k < first[i + 1]; k++) {
      l += lacc[k];
      const float* a = acc.data() + k * slot;
      for (size_t u = 0; u < slot; u++) sum[u] += a[u];
    }
    loss[i] = l / N;
    const float* gEs = sum.data() + (tied ? 0 : (M + 1) * n8);
    for (int64_t j = 0; j < M; j++)
      for (int64_t f = 0; f < n; f++) {
        gW[(i * M + j) * n + f] = s * gEs[j * n8 + f];
        if (!tied) gDt[(i * M + j) * n + f] = s * sum[j * n8 + f];
      }
    for (int64_t f = 0; f < n; f++) gb[i * n + f] = s * sum[M * n8 + f];
  }
}
"""

_P, _L, _I = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SIGNATURES = {
    "ml_csr_count": [_P, _L, _L, _L, _P, _I],
    "ml_csr_fill": [_P, _L, _L, _L, _P, _P, _P, _I],
    "ml_csr_take": [_P, _P, _P, _L, _L, _P, _L, _P, _P, _P, _I],
    "ml_bottleneck_step": [_L, _L, _L, _L, _P, _P, _P, _P, _P, _P, _P, _P, _I]
    + [_P, _P, _P, _P, _I],
}


def _library() -> ctypes.CDLL | None:
    lib = native.load_library("memlens_bottleneck", SOURCE)
    if lib is not None and not getattr(lib, "_memlens_typed", False):
        for name, args in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, None
        lib._memlens_typed = True
    return lib


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
