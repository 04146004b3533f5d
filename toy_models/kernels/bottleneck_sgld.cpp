// memlens fused SGLD for the bottleneck: built and loaded by memlens.native.load_kernel
// (see toy_models/bottleneck_sgld.py and memlens/sampling/fused_sgld.py).
//
// K steps of localised, tempered, preconditioned SGLD on every row e of the flat buffer W [E, P]
// (row e is a copy of instance e % I), each row on its own thread, with no barrier between steps:
//
//   w <- w - (eps_e / 2) m (nbeta_e grad L(w) + gamma (w - w0)) + sqrt(eps_e) sqrt(m) xi
//
// L is the mean over the step's minibatch (rows idx, or rows the kernel picks from the copy's keys
// and the step number as memlens.sampling.random_streams.MinibatchRows) or over the instance's
// first lengths[i] rows, of
// sum_f I_f (ReLU(D^T W x + b) - x)_f^2, as Bottleneck.loss; losses[k, e] is L at the weights
// before step k's update. The sparse input is read at its active entries (CSR over the rows of the
// flattened [T * I, n] training set); the decoder, ReLU and loss run on 8 examples at a time.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#ifdef __AVX__
#include <immintrin.h>
#endif

#define ML_MAX_HIDDEN 64

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));

static inline v8 ld(const float* p) { return *reinterpret_cast<const v8u*>(p); }
static inline void st(float* p, v8 v) { *reinterpret_cast<v8u*>(p) = v; }
static inline v8 relu(v8 p) {  // max(0, p), keeping NaN as torch.relu does
#ifdef __AVX__
  return (v8)_mm256_max_ps(_mm256_setzero_ps(), (__m256)p);
#else
  const v8 z = {};
  return p < z ? z : p;
#endif
}
static inline v8 where_pos(v8 p, v8 e) {  // e where p > 0, else 0 (0 at NaN, as torch)
#ifdef __AVX__
  return (v8)_mm256_and_ps(_mm256_cmp_ps((__m256)p, _mm256_setzero_ps(), _CMP_GT_OQ),
                           (__m256)e);
#else
  const v8 z = {};
  return p > z ? e : z;
#endif
}
static inline float hsum(v8 v) {
  float s = 0;
  for (int k = 0; k < 8; k++) s += v[k];
  return s;
}

#define ML_GROUPS 8  // groups of 8 examples per tile

// Scratch of one thread: this row's weights as scalars [j][f], the gradient accumulators as
// 8-lane vectors (one lane per example of a group, summed over lanes at the end) and a tile of
// ML_GROUPS groups: inputs X [g][f] and hidden activations H [g][j], 8 lanes each.
struct Scratch {
  std::vector<float> E, D, b, I, gE, X, H;  // X, H: [g][f or j][8]
  std::vector<v8> gD, gb;
  std::vector<v8> WT, HT, gET;  // hidden widths <= 8 (row_pass_t): [f or example][j]
  std::vector<int32_t> ef, er;  // the tile's active entries: feature, example; ev: value
  std::vector<float> ev;
  Scratch(int M, int n)
      : E((size_t)M * n), D((size_t)M * n), b(n), I(n), gE((size_t)M * n),
        X((size_t)ML_GROUPS * n * 8), H((size_t)ML_GROUPS * M * 8), gD((size_t)M * n), gb(n),
        WT(n), HT((size_t)ML_GROUPS * 8), gET(n), ef((size_t)ML_GROUPS * 8 * n + 8),
        er((size_t)ML_GROUPS * 8 * n + 8), ev((size_t)ML_GROUPS * 8 * n + 8) {}
};

// Transpose 8 rows of 8 lanes in place (row l lane j -> row j lane l).
static inline void transpose8(v8* r) {
#ifdef __AVX__
  __m256 t[8], u[8];
  for (int k = 0; k < 8; k += 2) {
    t[k] = _mm256_unpacklo_ps((__m256)r[k], (__m256)r[k + 1]);
    t[k + 1] = _mm256_unpackhi_ps((__m256)r[k], (__m256)r[k + 1]);
  }
  for (int k = 0; k < 8; k += 4) {
    u[k] = _mm256_shuffle_ps(t[k], t[k + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[k + 1] = _mm256_shuffle_ps(t[k], t[k + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[k + 2] = _mm256_shuffle_ps(t[k + 1], t[k + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[k + 3] = _mm256_shuffle_ps(t[k + 1], t[k + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int k = 0; k < 4; k++) {
    r[k] = (v8)_mm256_permute2f128_ps(u[k], u[k + 4], 0x20);
    r[k + 4] = (v8)_mm256_permute2f128_ps(u[k], u[k + 4], 0x31);
  }
#else
  for (int a = 0; a < 8; a++)
    for (int c = a + 1; c < 8; c++) {
      const float x = r[a][c];
      r[a][c] = r[c][a];
      r[c][a] = x;
    }
#endif
}

// A tile's active entries: feature f[k] of the tile's example r[k] has value v[k], k < n.
struct Entries {
  const int32_t* __restrict__ f;
  const int32_t* __restrict__ r;
  const float* __restrict__ v;
  int64_t n;
};

// The tile's active entries (example rows[0:nt]), listed in s.ef / s.er / s.ev.
static inline __attribute__((always_inline)) Entries list_entries(
    Scratch& s, const int64_t* rows, int64_t nt, const int64_t* row_ptr,
    const int32_t* __restrict__ col, const float* __restrict__ val) {
  int32_t* __restrict__ ef = s.ef.data();
  int32_t* __restrict__ er = s.er.data();
  float* __restrict__ ev = s.ev.data();
  int64_t ne = 0;
  for (int64_t r = 0; r < nt; r++) {
    const int64_t q = rows[r], p0 = row_ptr[q], c = row_ptr[q + 1] - p0;
    if (c <= 8) {
      std::memcpy(ef + ne, col + p0, 8 * sizeof(int32_t));
      std::memcpy(ev + ne, val + p0, 8 * sizeof(float));
      for (int k = 0; k < 8; k++) er[ne + k] = (int32_t)r;
    } else {
      for (int64_t k = 0; k < c; k++) {
        ef[ne + k] = col[p0 + k];
        ev[ne + k] = val[p0 + k];
        er[ne + k] = (int32_t)r;
      }
    }
    ne += c;
  }
  return {ef, er, ev, ne};
}

// Lanes of group g of a tile of nt examples that hold an example: 1, else 0.
static inline v8 lane_mask(int64_t nt, int g) {
  const int nl = (int)std::min<int64_t>(8, nt - 8 * (int64_t)g);
  v8 mask = {};
  for (int l = 0; l < nl; l++) mask[l] = 1.0f;
  return mask;
}

// The decoder, ReLU and loss of one group of 8 examples (h[j]: lanes over the examples, x at Xg
// [f][8]); with GRAD the decoder and bias gradients (gD, gb) and the hidden gradient gh.
template <bool GRAD>
static inline __attribute__((always_inline)) void decode_group(
    int M, int n, const float* __restrict__ D, const float* __restrict__ b,
    const float* __restrict__ I, const float* __restrict__ Xg, v8 mask, const v8* h, v8* gh,
    v8& ls, v8* __restrict__ gD, v8* __restrict__ gb) {
  const v8 z = {};
  for (int f = 0; f < n; f++) {
    v8 p = z + b[f];
    for (int j = 0; j < M; j++) p += D[(int64_t)j * n + f] * h[j];
    const v8 d = relu(p) - ld(Xg + 8 * f);
    const v8 e = (mask * I[f]) * d;
    ls += d * e;
    if (GRAD) {
      const v8 gg = where_pos(p, e);
      gb[f] += gg;
      for (int j = 0; j < M; j++) {
        gD[(int64_t)j * n + f] += gg * h[j];
        gh[j] += gg * D[(int64_t)j * n + f];
      }
    }
  }
}

// Loss (summed over the rows, not yet divided) of one copy on CSR rows rows[0:N], and with GRAD
// the sums of the gradients (decoder into gD [j][f] lanes, bias into gb lanes, encoder into gE).
// Eight examples at a time, one per lane: h, the hidden gradient and x_f are 8-lane vectors, the
// weights scalars, so there is no padding of the feature axis and no per-example reduction. A tile
// of groups is scattered first, so its lane-wise stores have retired before the vector loads. The
// tile's active entries are first listed in one flat array (rows of up to 8 entries copied 8 at a
// time, which needs 8 readable entries past the end of col and val): one loop over them then
// replaces a short loop per example, whose varying length the branch predictor cannot follow.
template <int MM, bool GRAD>
static double row_pass(Scratch& s, int M_rt, int n, const int64_t* rows, int64_t N,
                       const int64_t* row_ptr, const int32_t* __restrict__ col,
                       const float* __restrict__ val) {
  constexpr int CAP = MM > 0 ? MM : ML_MAX_HIDDEN;
  const int M = MM > 0 ? MM : M_rt;
  const float* __restrict__ Wn = s.E.data();  // encoder [j][f]
  const float* __restrict__ D = s.D.data();   // decoder [j][f]
  const float* __restrict__ b = s.b.data();
  const float* __restrict__ I = s.I.data();
  float* __restrict__ X = s.X.data();  // written lane by lane as floats, read as vectors
  float* __restrict__ H = s.H.data();
  v8* __restrict__ gD = s.gD.data();
  v8* __restrict__ gb = s.gb.data();
  float* __restrict__ gE = s.gE.data();
  const v8 z = {};
  if (GRAD) {
    std::fill(s.gD.begin(), s.gD.end(), z);
    std::fill(s.gb.begin(), s.gb.end(), z);
    std::fill(s.gE.begin(), s.gE.end(), 0.0f);
  }
  v8 ls = z;
  for (int64_t t0 = 0; t0 < N; t0 += 8 * ML_GROUPS) {
    const int64_t nt = std::min<int64_t>(8 * ML_GROUPS, N - t0);
    const int ng = (int)((nt + 7) / 8);
    std::fill(H, H + (size_t)ng * M * 8, 0.0f);
    const Entries en = list_entries(s, rows + t0, nt, row_ptr, col, val);
    for (int64_t k = 0; k < en.n; k++) {  // encoder on the active entries; scatter x into the tile
      const int32_t r = en.r[k], f = en.f[k];
      const float v = en.v[k];
      X[((size_t)(r >> 3) * n + f) * 8 + (r & 7)] = v;
      float* Hr = H + (size_t)(r >> 3) * M * 8 + (r & 7);
      for (int j = 0; j < M; j++) Hr[8 * j] += Wn[(int64_t)j * n + f] * v;
    }
    for (int g = 0; g < ng; g++) {
      const v8 mask = lane_mask(nt, g);
      const float* Xg = X + (size_t)g * n * 8;
      float* Hg = H + (size_t)g * M * 8;
      v8 h[CAP], gh[CAP];
      for (int j = 0; j < M; j++) {
        h[j] = ld(Hg + 8 * j);
        gh[j] = z;
      }
      decode_group<GRAD>(M, n, D, b, I, Xg, mask, h, gh, ls, gD, gb);
      if (GRAD)
        for (int j = 0; j < M; j++) st(Hg + 8 * j, gh[j]);  // H: now the hidden gradient
    }
    for (int64_t k = 0; k < en.n; k++) {  // encoder gradient on the active entries; clear the tile
      const int32_t r = en.r[k], f = en.f[k];
      X[((size_t)(r >> 3) * n + f) * 8 + (r & 7)] = 0.0f;
      if (GRAD) {
        const float v = en.v[k];
        const float* Hr = H + (size_t)(r >> 3) * M * 8 + (r & 7);
        for (int j = 0; j < M; j++) gE[(int64_t)j * n + f] += Hr[8 * j] * v;
      }
    }
  }
  double loss = 0;
  for (int k = 0; k < 8; k++) loss += ls[k];
  return loss;
}

// row_pass for hidden widths MM <= 8, the same sums in the same order (so the same floats): the
// sparse encoder steps work on one example's hidden vector at a time, 8 lanes over j (one vector
// store per active entry instead of MM scalar ones), and each group's 8 hidden vectors are
// transposed to the 8-lane-per-example layout of the decoder loop, and its hidden gradient back.
template <int MM, bool GRAD>
static double row_pass_t(Scratch& s, int n, const int64_t* rows, int64_t N,
                         const int64_t* row_ptr, const int32_t* __restrict__ col,
                         const float* __restrict__ val) {
  static_assert(MM > 0 && MM <= 8, "row_pass_t: hidden widths up to 8");
  constexpr int M = MM;
  const float* __restrict__ Wn = s.E.data();  // encoder [j][f]
  const float* __restrict__ D = s.D.data();   // decoder [j][f]
  const float* __restrict__ b = s.b.data();
  const float* __restrict__ I = s.I.data();
  float* __restrict__ X = s.X.data();
  v8* __restrict__ WT = s.WT.data();    // encoder [f], lanes j (zero past M)
  v8* __restrict__ HT = s.HT.data();    // [example of the tile], lanes j: h, then its gradient
  v8* __restrict__ gET = s.gET.data();  // encoder gradient [f], lanes j
  v8* __restrict__ gD = s.gD.data();
  v8* __restrict__ gb = s.gb.data();
  const v8 z = {};
  for (int f = 0; f < n; f++) {
    v8 w = z;
    for (int j = 0; j < M; j++) w[j] = Wn[(int64_t)j * n + f];
    WT[f] = w;
  }
  if (GRAD) {
    std::fill(s.gD.begin(), s.gD.end(), z);
    std::fill(s.gb.begin(), s.gb.end(), z);
    std::fill(s.gET.begin(), s.gET.end(), z);
  }
  v8 ls = z;
  for (int64_t t0 = 0; t0 < N; t0 += 8 * ML_GROUPS) {
    const int64_t nt = std::min<int64_t>(8 * ML_GROUPS, N - t0);
    const int ng = (int)((nt + 7) / 8);
    std::fill(HT, HT + (size_t)ng * 8, z);
    const Entries en = list_entries(s, rows + t0, nt, row_ptr, col, val);
    for (int64_t k = 0; k < en.n; k++) {  // encoder on the active entries; scatter x into the tile
      const int32_t r = en.r[k], f = en.f[k];
      const float v = en.v[k];
      X[((size_t)(r >> 3) * n + f) * 8 + (r & 7)] = v;
      HT[r] += WT[f] * v;
    }
    for (int g = 0; g < ng; g++) {
      const v8 mask = lane_mask(nt, g);
      const float* Xg = X + (size_t)g * n * 8;
      v8 h[8], gh[8];
      for (int l = 0; l < 8; l++) h[l] = HT[8 * g + l];
      transpose8(h);  // h[j]: lanes over the group's examples
      for (int j = 0; j < 8; j++) gh[j] = z;
      decode_group<GRAD>(M, n, D, b, I, Xg, mask, h, gh, ls, gD, gb);
      if (GRAD) {
        transpose8(gh);  // gh[l]: example l's hidden gradient, lanes over j
        for (int l = 0; l < 8; l++) HT[8 * g + l] = gh[l];
      }
    }
    for (int64_t k = 0; k < en.n; k++) {  // encoder gradient on the active entries; clear the tile
      const int32_t r = en.r[k], f = en.f[k];
      X[((size_t)(r >> 3) * n + f) * 8 + (r & 7)] = 0.0f;
      if (GRAD) gET[f] += HT[r] * en.v[k];
    }
  }
  if (GRAD)
    for (int f = 0; f < n; f++)
      for (int j = 0; j < M; j++) s.gE[(int64_t)j * n + f] = gET[f][j];
  double loss = 0;
  for (int k = 0; k < 8; k++) loss += ls[k];
  return loss;
}

template <bool GRAD>
static double row_pass_any(Scratch& s, int M, int n, const int64_t* rows, int64_t N,
                           const int64_t* row_ptr, const int32_t* col, const float* val) {
  switch (M) {  // common widths get code of their own
    case 2: return row_pass_t<2, GRAD>(s, n, rows, N, row_ptr, col, val);
    case 3: return row_pass_t<3, GRAD>(s, n, rows, N, row_ptr, col, val);
    case 5: return row_pass_t<5, GRAD>(s, n, rows, N, row_ptr, col, val);
    case 8: return row_pass_t<8, GRAD>(s, n, rows, N, row_ptr, col, val);
    default: return row_pass<0, GRAD>(s, M, n, rows, N, row_ptr, col, val);
  }
}

// This row's weights into the scratch: encoder E[j][f], decoder D[j][f] (= Dt), bias.
static void load_row(Scratch& s, const float* w, int64_t n, int64_t M, int tied) {
  const int64_t P = (tied ? 1 : 2) * M * n + n;
  for (int64_t j = 0; j < M; j++)
    for (int64_t f = 0; f < n; f++) {
      s.E[j * n + f] = w[j * n + f];
      s.D[j * n + f] = tied ? w[j * n + f] : w[M * n + f * M + j];
    }
  for (int64_t f = 0; f < n; f++) s.b[f] = w[P - n + f];
}

// The CSR rows of instance i of a flattened [T * I, n] set, t * I + i for t < T, per instance.
static std::vector<int64_t> all_rows(int64_t T, int64_t I) {
  std::vector<int64_t> full((size_t)(T * I));
  for (int64_t i = 0; i < I; i++)
    for (int64_t t = 0; t < T; t++) full[i * T + t] = t * I + i;
  return full;
}

// Each row's loss on its instance's first lengths[i] rows of a flattened [T * I, n] set (T the
// largest length), no update: the sampler's evaluation-set loss.
extern "C" void ml_bottleneck_losses(int64_t E, int64_t I, int64_t n, int64_t M, int tied,
                                     const int64_t* row_ptr, const int32_t* col,
                                     const float* val, const int64_t* lengths, const float* imp,
                                     const float* W, float* losses, int nthreads) {
  const int64_t P = (tied ? 1 : 2) * M * n + n;
  int64_t T = 0;
  for (int64_t i = 0; i < I; i++) T = std::max<int64_t>(T, lengths[i]);
  const std::vector<int64_t> full = all_rows(T, I);
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && E > 1)
  {
    Scratch s((int)M, (int)n);
#pragma omp for schedule(static)
    for (int64_t e = 0; e < E; e++) {
      const int64_t i = e % I;
      std::memcpy(s.I.data(), imp + i * n, n * sizeof(float));
      load_row(s, W + e * P, n, M, tied);
      const int64_t N = std::max<int64_t>(0, std::min<int64_t>(lengths[i], T));
      const double l = row_pass_any<false>(s, (int)M, (int)n, full.data() + i * T, N, row_ptr,
                                           col, val);
      losses[e] = (float)(l / (double)std::max<int64_t>(N, 1));
    }
  }
}

// MinibatchRows' hash (Wellons' low-bias 32-bit integer hash), in uint32 arithmetic.
static inline uint32_t hash32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x21f0aaadu;
  x ^= x >> 15;
  x *= 0x735a2d97u;
  x ^= x >> 15;
  return x;
}

// Row layout (Bottleneck's parameters in order): W [M, n], then W_dec [n, M] when untied, then
// b [n]. P = M n (+ n M) + n.
extern "C" void ml_bottleneck_sgld(int64_t K, int64_t E, int64_t I, int64_t n, int64_t M,
                                   int tied, const int64_t* row_ptr, const int32_t* col,
                                   const float* val, const int64_t* idx, int64_t B,
                                   const int64_t* lengths, const float* imp, float* W,
                                   const float* W0, const float* Mpre, const float* eps,
                                   const float* nbeta, float gamma, const float* noise,
                                   float* losses, int nthreads, const uint32_t* keys,
                                   int64_t step0, const int64_t* npts, int64_t Tn) {
  const int64_t P = (tied ? 1 : 2) * M * n + n;
  const bool mini = idx != nullptr || keys != nullptr;
  int64_t T = 0;  // full batch: the rows of instance i are t * I + i for t < lengths[i]
  if (!mini)
    for (int64_t i = 0; i < I; i++) T = std::max<int64_t>(T, lengths[i]);
  const std::vector<int64_t> full = all_rows(mini ? 0 : T, I);
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && E > 1)
  {
    Scratch s((int)M, (int)n);
    std::vector<int64_t> picked(keys ? B : 0);  // this step's minibatch rows, from the keys
#pragma omp for schedule(static)
    for (int64_t e = 0; e < E; e++) {
      const int64_t i = e % I;
      float* w = W + e * P;
      const float* w0 = W0 + e * P;
      const float* m = Mpre ? Mpre + e * P : nullptr;
      const float half = eps[e] * 0.5f, root = std::sqrt(eps[e]), nb = nbeta[e];
      std::memcpy(s.I.data(), imp + i * n, n * sizeof(float));
      const int64_t N = mini ? B : std::max<int64_t>(0, std::min<int64_t>(lengths[i], T));
      const float scale = (float)(2.0 / (double)std::max<int64_t>(N, 1));
      for (int64_t k = 0; k < K; k++) {
        load_row(s, w, n, M, tied);
        const int64_t* rows = idx ? idx + (k * E + e) * B : full.data() + i * T;
        if (keys) {  // MinibatchRows.rows: min(u npts[i] / 2^32, Tn - 1) * I + i
          const uint32_t* kc = keys + 2 * (e / I);
          const uint32_t h = hash32(kc[0] ^ hash32((uint32_t)(step0 + k) ^ kc[1]));
          const uint64_t np = (uint64_t)npts[i];
          for (int64_t t = 0; t < B; t++) {
            const uint32_t u = hash32(h + (uint32_t)(t * I + i) * 0x9e3779b9u);
            const int64_t r = (int64_t)(((uint64_t)u * np) >> 32);
            picked[t] = std::min<int64_t>(r, Tn - 1) * I + i;
          }
          rows = picked.data();
        }
        const double l = row_pass_any<true>(s, (int)M, (int)n, rows, N, row_ptr, col, val);
        losses[k * E + e] = (float)(l / (double)std::max<int64_t>(N, 1));
        // the update, parameter by parameter, in the order of the row
        const float* xi = noise + (k * E + e) * P;
        auto update = [&](int64_t p, float g) {
          const float grad = nb * (scale * g) + gamma * (w[p] - w0[p]);
          if (m) {
            w[p] = w[p] - half * m[p] * grad + root * std::sqrt(m[p]) * xi[p];
          } else {
            w[p] = w[p] - half * grad + root * xi[p];
          }
        };
        for (int64_t j = 0; j < M; j++)  // encoder (tied: plus the decoder's gradient)
          for (int64_t f = 0; f < n; f++)
            update(j * n + f, s.gE[j * n + f] + (tied ? hsum(s.gD[j * n + f]) : 0.0f));
        if (!tied)
          for (int64_t f = 0; f < n; f++)
            for (int64_t j = 0; j < M; j++) update(M * n + f * M + j, hsum(s.gD[j * n + f]));
        for (int64_t f = 0; f < n; f++) update(P - n + f, hsum(s.gb[f]));
      }
    }
  }
}
