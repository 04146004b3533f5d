// memlens unembed kernel: built and loaded by memlens.native.load_kernel (see toy_models/unembed_kernel.py).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));

static inline v8 ld(const float* p) { return *reinterpret_cast<const v8u*>(p); }
static inline void st(float* p, v8 v) { *reinterpret_cast<v8u*>(p) = v; }
static inline v8 bc(float s) { return v8{} + s; }

// exp(x) for x <= 88 (Cephes' polynomial on [-ln2/2, ln2/2], about 2 ulp); exactly 0 below
// -87.3 (and for -inf); NaN stays NaN.
static inline v8 vexp(v8 x) {
  const v8 lo = bc(-87.3f);
  const v8i tiny = x < lo;
  x = x < lo ? lo : x;  // NaN compares false: stays NaN
  const v8 t = x * 1.44269504088896341f + 0.5f;
  v8i k = __builtin_convertvector(t, v8i);
  k -= (v8i)(__builtin_convertvector(k, v8) > t) & 1;  // floor
  const v8 kf = __builtin_convertvector(k, v8);
  const v8 f = x - kf * 0.693359375f + kf * 2.12194440e-4f;
  v8 p = bc(1.9875691500e-4f);
  p = p * f + 1.3981999507e-3f;
  p = p * f + 8.3334519073e-3f;
  p = p * f + 4.1665795894e-2f;
  p = p * f + 1.6666665459e-1f;
  p = p * f + 5.0000001201e-1f;
  p = p * (f * f) + f + 1.0f;
  const v8 scale = (v8)((k + 127) << 23);
  const v8 out = p * scale;
  return (v8)((v8i)out & ~tiny);
}

static inline float hmax(v8 v) {
  float m = v[0];
  for (int k = 1; k < 8; k++) m = v[k] > m || v[k] != v[k] ? v[k] : m;
  return m;
}
static inline double hsum(v8 v) {
  double s = 0;
  for (int k = 0; k < 8; k++) s += v[k];
  return s;
}

#define ML_ROWS 32

struct Item {
  int64_t inst, r0, r1;
};

// One work item: rows [r0, r1) of one instance. Wt [d][V8] (padded logits: bias -inf, W 0).
static void run_item(const Item& it, int64_t T, int d, int V8, const float* r, const int64_t* y,
                     const float* Wt, const float* bp, float* gWt, float* gb, double* loss_out) {
  std::vector<float> Z((size_t)ML_ROWS * V8), spare_(V8);
  float* spare = spare_.data();
  double loss = 0;
  const int nv = V8 / 8;
  for (int64_t t0 = it.r0; t0 < it.r1; t0 += ML_ROWS) {
    const int rows = (int)std::min<int64_t>(ML_ROWS, it.r1 - t0);
    const float* R = r + (it.inst * T + t0) * d;
    // Z = b + R Wt, 4 rows x 16 logits per register tile (8 independent sums: the FMA
    // latency is hidden); missing rows of the last tile repeat the tile's last row
    for (int t = 0; t < rows; t += 4) {
      const float* __restrict__ rp[4];
      float* __restrict__ zp[4];
      for (int u = 0; u < 4; u++) {
        const int tu = t + u < rows ? t + u : rows - 1;
        rp[u] = R + (int64_t)tu * d;
        zp[u] = Z.data() + (size_t)tu * V8;
      }
      for (int v = 0; v < V8; v += 16) {
        const v8 c0 = ld(bp + v), c1 = ld(bp + v + 8);
        v8 a0 = c0, a1 = c1, b0 = c0, b1 = c1, e0 = c0, e1 = c1, f0 = c0, f1 = c1;
        const float* __restrict__ w = Wt + v;
        for (int j = 0; j < d; j++, w += V8) {
          const v8 w0 = ld(w), w1 = ld(w + 8);
          a0 += w0 * rp[0][j];
          a1 += w1 * rp[0][j];
          b0 += w0 * rp[1][j];
          b1 += w1 * rp[1][j];
          e0 += w0 * rp[2][j];
          e1 += w1 * rp[2][j];
          f0 += w0 * rp[3][j];
          f1 += w1 * rp[3][j];
        }
        st(zp[3] + v, f0);
        st(zp[3] + v + 8, f1);
        st(zp[2] + v, e0);
        st(zp[2] + v + 8, e1);
        st(zp[1] + v, b0);
        st(zp[1] + v + 8, b1);
        st(zp[0] + v, a0);
        st(zp[0] + v + 8, a1);
      }
    }
    // softmax in place: Z_t -> g_t = softmax(z_t) - onehot(y_t); loss += logsumexp - z_y
    for (int t = 0; t < rows; t++) {
      float* z = &Z[(size_t)t * V8];
      const int64_t yt = y[it.inst * T + t0 + t];
      const float zy = z[yt];
      v8 m8 = ld(z);
      for (int q = 1; q < nv; q++) {
        const v8 c = ld(z + 8 * q);
        m8 = c > m8 || c != c ? c : m8;
      }
      const float m = hmax(m8);
      v8 s8 = {};
      for (int q = 0; q < nv; q++) {
        const v8 e = vexp(ld(z + 8 * q) - m);
        st(z + 8 * q, e);
        s8 += e;
      }
      const double s = hsum(s8);
      loss += std::log(s) + (double)m - (double)zy;
      const float inv = (float)(1.0 / s);
      for (int q = 0; q < nv; q++) st(z + 8 * q, ld(z + 8 * q) * inv);
      z[yt] -= 1.0f;
    }
    // gWt += R^T G, 4 features x 16 logits per register tile; gb += sum_t G. Features past d
    // in the last tile are summed into a spare row.
    for (int j = 0; j < d; j += 4) {
      int jj[4];
      float* __restrict__ gp[4];
      for (int u = 0; u < 4; u++) {
        jj[u] = j + u < d ? j + u : d - 1;
        gp[u] = j + u < d ? gWt + (int64_t)(j + u) * V8 : spare;
      }
      for (int v = 0; v < V8; v += 16) {
        v8 a0 = {}, a1 = {}, b0 = {}, b1 = {}, e0 = {}, e1 = {}, f0 = {}, f1 = {};
        const float* __restrict__ g = Z.data() + v;
        const float* __restrict__ rr = R;
        for (int t = 0; t < rows; t++, g += V8, rr += d) {
          const v8 g0 = ld(g), g1 = ld(g + 8);
          a0 += g0 * rr[jj[0]];
          a1 += g1 * rr[jj[0]];
          b0 += g0 * rr[jj[1]];
          b1 += g1 * rr[jj[1]];
          e0 += g0 * rr[jj[2]];
          e1 += g1 * rr[jj[2]];
          f0 += g0 * rr[jj[3]];
          f1 += g1 * rr[jj[3]];
        }
        const v8 acc[4][2] = {{a0, a1}, {b0, b1}, {e0, e1}, {f0, f1}};
        for (int u = 0; u < 4; u++) {
          st(gp[u] + v, ld(gp[u] + v) + acc[u][0]);
          st(gp[u] + v + 8, ld(gp[u] + v + 8) + acc[u][1]);
        }
      }
    }
    for (int t = 0; t < rows; t++)
      for (int q = 0; q < nv; q++) st(gb + 8 * q, ld(gb + 8 * q) + ld(&Z[(size_t)t * V8 + 8 * q]));
  }
  *loss_out = loss;
}

// Cross-entropy losses (mean over each instance's first lengths[i] rows) and the gradients of
// their sum. r [I][T][d], y [I][T] (instance-major), W [I][V][d], b [I][V].
extern "C" void ml_unembed_step(int64_t I, int64_t T, int64_t d, int64_t V,
                                const int64_t* lengths, const float* r, const int64_t* y,
                                const float* W, const float* b, double* loss, float* gW,
                                float* gb, int nthreads) {
  const int V8 = (int)((V + 15) / 16 * 16);  // logits padded to 16 (bias -inf, weights 0)
  const size_t per = (size_t)(d + 1) * V8;
  std::vector<float> pad((size_t)I * per, 0.0f);  // per instance: Wt [d][V8], then b [V8]
  for (int64_t i = 0; i < I; i++) {
    float* q = pad.data() + i * per;
    for (int64_t v = 0; v < V; v++)
      for (int64_t j = 0; j < d; j++) q[j * V8 + v] = W[(i * V + v) * d + j];
    for (int64_t v = 0; v < V8; v++) q[d * V8 + v] = v < V ? b[i * V + v] : -INFINITY;
  }
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
  std::vector<float> acc((size_t)nI * per, 0.0f);  // per item: gWt [d][V8], then gb [V8]
  std::vector<double> lacc(nI, 0.0);
  const bool par = nthreads > 1 && I * T * V > 65536;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (par)
  for (int64_t k = 0; k < nI; k++) {
    const float* q = pad.data() + items[k].inst * per;
    float* a = acc.data() + k * per;
    run_item(items[k], T, (int)d, V8, r, y, q, q + d * V8, a, a + d * V8, &lacc[k]);
  }
#pragma omp parallel for schedule(static) num_threads(nthreads) if (par)
  for (int64_t i = 0; i < I; i++) {
    const int64_t L = std::min<int64_t>(std::max<int64_t>(lengths[i], 0), T);
    const double N = (double)std::max<int64_t>(L, 1);
    const float s = (float)(1.0 / N);
    double l = 0;
    std::vector<float> sum(per, 0.0f);
    for (int64_t k = first[i]; k < first[i + 1]; k++) {
      l += lacc[k];
      const float* a = acc.data() + k * per;
      for (size_t u = 0; u < per; u++) sum[u] += a[u];
    }
    loss[i] = l / N;
    for (int64_t v = 0; v < V; v++) {
      for (int64_t j = 0; j < d; j++) gW[(i * V + v) * d + j] = s * sum[j * V8 + v];
      gb[i * V + v] = s * sum[d * V8 + v];
    }
  }
}
