// memlens bottleneck kernel: built and loaded by memlens.native.load_kernel (see toy_models/bottleneck_kernel.py).
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
