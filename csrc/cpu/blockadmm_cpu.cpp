// blockadmm C++ CPU kernels (OpenMP), bound with pybind11.
//
// The interface is torch-free: Python passes tensor.data_ptr() as integers plus sizes, after it has
// checked device, dtype (float32), contiguity and shapes (blockadmm/ops/_cpu.py). Nothing here links
// against libtorch, so the module does not depend on the torch build or its C++ ABI.
//
// Kernels:
//   aux_dual_update   the fused auxiliary/dual update of DESIGN §2, plain and indexed (batch mode:
//                     rows j = index[i] of the z/u tables are read and written in place, no gather
//                     or scatter copies), every built-in prox, step "grad" or "sign"; returns the sum
//                     of squared primal residuals.
//   nmf_mu_epilogue   x <- x * num / (den + l1 + l2*x + eps), in place, results below sqrt(FLT_MIN) flushed to zero
//                     (the GEMMs stay with torch's BLAS)
//   linear_epilogue   out = act(pre); r = out - z - u; pre <- (rho/m) r act'(pre); returns sum r^2
//   nmf_hals_update   one HALS pass on NMF codes, float32 and float64 (its own file: nmf_hals.cpp)
//
// Portable flags only (no -march=native, no -ffast-math: NaN and inf must behave as in torch).
// Inner loops are branch-free (selects), so the compiler vectorizes them with `omp simd`.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "threads.h"

namespace py = pybind11;

namespace {

enum ProxKind : int { PROX_NONE = 0, PROX_CLAMP = 1, PROX_L1 = 2 };
enum Activation : int { ACT_IDENTITY = 0, ACT_RELU = 1, ACT_LEAKY = 2, ACT_SIGMOID = 3, ACT_TANH = 4 };

constexpr int64_t kChunk = 4096;  // elements per float partial sum (then summed in double)
constexpr float kLeakySlope = 0.01f;

struct AuxParams {
  float rho, lr, dual, lo, hi, thr;
};

// One contiguous run of n elements: z/u (table rows) and a/g (batch rows) line up element by element.
template <int PROX, bool SIGN, bool HAS_G>
inline float aux_run(float* __restrict z, float* __restrict u, const float* __restrict a,
                     const float* __restrict g, int64_t n, const AuxParams p) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t c = 0; c < n; ++c) {
    const float zj = z[c], uj = u[c], ai = a[c];
    float s = p.rho * (zj - ai + uj);
    if (HAS_G) s = s + g[c];
    if (SIGN) s = s > 0.f ? 1.f : (s < 0.f ? -1.f : s);  // sign(0) = 0, sign(nan) = nan, as torch
    float zn = zj - p.lr * s;
    if (PROX == PROX_CLAMP) {
      zn = zn < p.lo ? p.lo : zn;  // comparisons are false for nan: nan propagates, as torch.clamp
      zn = zn > p.hi ? p.hi : zn;
    } else if (PROX == PROX_L1) {
      float m = std::fabs(zn) - p.thr;
      m = m > 0.f ? m : 0.f;
      zn = zn > 0.f ? m : (zn < 0.f ? -m : zn * m);
    }
    const float diff = zn - ai;
    u[c] = uj + p.dual * diff;
    z[c] = zn;
    acc += diff * diff;
  }
  return acc;
}

template <int PROX, bool SIGN, bool HAS_G>
double aux_impl(float* z, float* u, const float* a, const float* g, const int64_t* index, int64_t rows,
                int64_t cols, const AuxParams p, int nthreads) {
  double total = 0.0;
  if (index == nullptr) {
    // Flat: the batch and the table coincide; split the whole array into chunks.
    const int64_t numel = rows * cols;
    const int64_t nchunks = (numel + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) reduction(+ : total) num_threads(nthreads) if (nchunks > 1)
    for (int64_t ch = 0; ch < nchunks; ++ch) {
      const int64_t o = ch * kChunk;
      const int64_t n = std::min(kChunk, numel - o);
      total += aux_run<PROX, SIGN, HAS_G>(z + o, u + o, a + o, g ? g + o : nullptr, n, p);
    }
  } else {
    // Indexed (batch mode): batch row i updates table row index[i], in place.
    const int64_t rows_per_task = std::max<int64_t>(1, kChunk / std::max<int64_t>(cols, 1));
    const int64_t ntasks = (rows + rows_per_task - 1) / rows_per_task;
#pragma omp parallel for schedule(static) reduction(+ : total) num_threads(nthreads) if (ntasks > 1)
    for (int64_t t = 0; t < ntasks; ++t) {
      const int64_t r1 = std::min(rows, (t + 1) * rows_per_task);
      for (int64_t i = t * rows_per_task; i < r1; ++i) {
        const int64_t j = index[i];
        for (int64_t c0 = 0; c0 < cols; c0 += kChunk) {
          const int64_t n = std::min(kChunk, cols - c0);
          total += aux_run<PROX, SIGN, HAS_G>(z + j * cols + c0, u + j * cols + c0, a + i * cols + c0,
                                              g ? g + i * cols + c0 : nullptr, n, p);
        }
      }
    }
  }
  return total;
}

template <int PROX, bool SIGN>
double aux_dispatch_g(bool has_g, float* z, float* u, const float* a, const float* g, const int64_t* index,
                      int64_t rows, int64_t cols, const AuxParams p, int nt) {
  return has_g ? aux_impl<PROX, SIGN, true>(z, u, a, g, index, rows, cols, p, nt)
               : aux_impl<PROX, SIGN, false>(z, u, a, g, index, rows, cols, p, nt);
}

template <int PROX>
double aux_dispatch_sign(bool sign, bool has_g, float* z, float* u, const float* a, const float* g,
                         const int64_t* index, int64_t rows, int64_t cols, const AuxParams p, int nt) {
  return sign ? aux_dispatch_g<PROX, true>(has_g, z, u, a, g, index, rows, cols, p, nt)
              : aux_dispatch_g<PROX, false>(has_g, z, u, a, g, index, rows, cols, p, nt);
}

double aux_dual_update(uintptr_t z, uintptr_t u, uintptr_t a, uintptr_t g, uintptr_t index, int64_t rows,
                       int64_t cols, double rho, double lr, double dual, int prox, double lo, double hi,
                       double thr, bool sign, int nthreads) {
  if (rows < 0 || cols < 0) throw std::invalid_argument("aux_dual_update: negative size");
  if (rows == 0 || cols == 0) return 0.0;
  if (!z || !u || !a) throw std::invalid_argument("aux_dual_update: null z, u or a pointer");
  if (prox < PROX_NONE || prox > PROX_L1) throw std::invalid_argument("aux_dual_update: unknown prox kind " + std::to_string(prox));
  const AuxParams p{(float)rho, (float)lr, (float)dual, (float)lo, (float)hi, (float)thr};
  const int nt = threads_or_default(nthreads);
  auto* zp = reinterpret_cast<float*>(z);
  auto* up = reinterpret_cast<float*>(u);
  auto* ap = reinterpret_cast<const float*>(a);
  auto* gp = reinterpret_cast<const float*>(g);
  auto* ip = reinterpret_cast<const int64_t*>(index);
  py::gil_scoped_release release;
  switch (prox) {
    case PROX_CLAMP: return aux_dispatch_sign<PROX_CLAMP>(sign, g != 0, zp, up, ap, gp, ip, rows, cols, p, nt);
    case PROX_L1: return aux_dispatch_sign<PROX_L1>(sign, g != 0, zp, up, ap, gp, ip, rows, cols, p, nt);
    default: return aux_dispatch_sign<PROX_NONE>(sign, g != 0, zp, up, ap, gp, ip, rows, cols, p, nt);
  }
}

constexpr float kFlushBelow = 1.0842022e-19f;  // sqrt(FLT_MIN)

// x <- x * num / (den + l1 + l2 * x + eps), elementwise over n values (same evaluation order as the reference).
void nmf_mu_epilogue(uintptr_t x, uintptr_t num, uintptr_t den, int64_t n, double l1, double l2, double eps,
                     int nthreads) {
  if (n <= 0) return;
  if (!x || !num || !den) throw std::invalid_argument("nmf_mu_epilogue: null pointer");
  auto* xp = reinterpret_cast<float*>(x);
  auto* np = reinterpret_cast<const float*>(num);
  auto* dp = reinterpret_cast<const float*>(den);
  const float fl1 = (float)l1, fl2 = (float)l2, feps = (float)eps;
  const int nt = threads_or_default(nthreads);
  const int64_t nchunks = (n + kChunk - 1) / kChunk;
  py::gil_scoped_release release;
#pragma omp parallel for schedule(static) num_threads(nt) if (nchunks > 1)
  for (int64_t ch = 0; ch < nchunks; ++ch) {
    const int64_t o = ch * kChunk, e = std::min(n, o + kChunk);
    float* __restrict xq = xp;
#pragma omp simd
    for (int64_t i = o; i < e; ++i) {
      const float xv = xq[i];
      const float v = xv * np[i] / (dp[i] + fl1 + fl2 * xv + feps);
      // Flush entries below sqrt(FLT_MIN) ~ 1.08e-19 to zero. Multiplicative updates shrink many factor
      // entries geometrically; once two of them multiply to a subnormal (< 1.2e-38) inside a GEMM, every
      // GEMM that reads them takes the slow microcode path (measured: MNIST-5k, k=64, iterations 190-200
      // ran 11x slower than the first ten with nothing flushed; flushing only subnormal entries, an
      // iteration at 200 was still 12% slower than with this bound). Above the bound, the product of any
      // two kept entries is a normal float; an entry of 1e-19 is 18 orders below MNIST's factors (~0.1),
      // nothing a float32 reconstruction can hold. NaN stays NaN.
      xq[i] = std::fabs(v) < kFlushBelow ? 0.f : v;
    }
  }
}

template <int ACT>
inline float act_fwd(float x, float* d) {
  if (ACT == ACT_IDENTITY) { *d = 1.f; return x; }
  if (ACT == ACT_RELU) { *d = x > 0.f ? 1.f : 0.f; return x < 0.f ? 0.f : x; }
  if (ACT == ACT_LEAKY) { *d = x > 0.f ? 1.f : kLeakySlope; return x > 0.f ? x : kLeakySlope * x; }
  if (ACT == ACT_SIGMOID) { const float s = 1.f / (1.f + std::exp(-x)); *d = s * (1.f - s); return s; }
  const float t = std::tanh(x);
  *d = 1.f - t * t;
  return t;
}

template <int ACT>
double linear_epi_impl(float* pre, float* out, const float* z, const float* u, int64_t n, float scale, int nt) {
  double total = 0.0;
  const int64_t nchunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) reduction(+ : total) num_threads(nt) if (nchunks > 1)
  for (int64_t ch = 0; ch < nchunks; ++ch) {
    const int64_t o = ch * kChunk, e = std::min(n, o + kChunk);
    float acc = 0.f;
    float* __restrict pq = pre;
    float* __restrict oq = out;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = o; i < e; ++i) {
      float d;
      const float y = act_fwd<ACT>(pq[i], &d);
      const float r = y - z[i] - u[i];
      oq[i] = y;
      pq[i] = scale * r * d;
      acc += r * r;
    }
    total += acc;
  }
  return total;
}

// pre (m×n, float32) holds x W^T + b on entry and gp = (rho/m) r act'(pre) on exit; out gets act(pre).
// Returns sum r^2 (the caller scales by rho/2m).
double linear_epilogue(uintptr_t pre, uintptr_t out, uintptr_t z, uintptr_t u, int64_t n, double scale,
                       int activation, int nthreads) {
  if (n <= 0) return 0.0;
  if (!pre || !out || !z || !u) throw std::invalid_argument("linear_epilogue: null pointer");
  auto* pp = reinterpret_cast<float*>(pre);
  auto* op = reinterpret_cast<float*>(out);
  auto* zp = reinterpret_cast<const float*>(z);
  auto* up = reinterpret_cast<const float*>(u);
  const int nt = threads_or_default(nthreads);
  const float s = (float)scale;
  py::gil_scoped_release release;
  switch (activation) {
    case ACT_IDENTITY: return linear_epi_impl<ACT_IDENTITY>(pp, op, zp, up, n, s, nt);
    case ACT_RELU: return linear_epi_impl<ACT_RELU>(pp, op, zp, up, n, s, nt);
    case ACT_LEAKY: return linear_epi_impl<ACT_LEAKY>(pp, op, zp, up, n, s, nt);
    case ACT_SIGMOID: return linear_epi_impl<ACT_SIGMOID>(pp, op, zp, up, n, s, nt);
    case ACT_TANH: return linear_epi_impl<ACT_TANH>(pp, op, zp, up, n, s, nt);
    default: throw std::invalid_argument("linear_epilogue: unknown activation " + std::to_string(activation));
  }
}

}  // namespace

void bind_nmf_hals(py::module_& m);  // nmf_hals.cpp

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "blockadmm C++ CPU kernels (OpenMP); raw float32 pointers, torch-free interface";
  m.def("aux_dual_update", &aux_dual_update, py::arg("z"), py::arg("u"), py::arg("a"), py::arg("g"),
        py::arg("index"), py::arg("rows"), py::arg("cols"), py::arg("rho"), py::arg("lr"), py::arg("dual"),
        py::arg("prox"), py::arg("lo"), py::arg("hi"), py::arg("thr"), py::arg("sign"), py::arg("nthreads") = 0,
        "Fused aux/dual update in place on float32 z/u (rows index[i] when index != 0); returns sum (zn-a)^2.");
  m.def("nmf_mu_epilogue", &nmf_mu_epilogue, py::arg("x"), py::arg("num"), py::arg("den"), py::arg("n"),
        py::arg("l1"), py::arg("l2"), py::arg("eps"), py::arg("nthreads") = 0,
        "x <- x * num / (den + l1 + l2*x + eps), in place, float32.");
  m.def("linear_epilogue", &linear_epilogue, py::arg("pre"), py::arg("out"), py::arg("z"), py::arg("u"),
        py::arg("n"), py::arg("scale"), py::arg("activation"), py::arg("nthreads") = 0,
        "out = act(pre); pre <- scale*(out - z - u)*act'(pre); returns sum (out - z - u)^2.");
  bind_nmf_hals(m);
  m.attr("LINEAR_RESIDUAL") = "out - z - u";
#ifdef _OPENMP
  m.attr("openmp") = true;
  m.attr("max_threads") = omp_get_max_threads();
#else
  m.attr("openmp") = false;
  m.attr("max_threads") = 1;
#endif
  m.attr("PROX_NONE") = (int)PROX_NONE;
  m.attr("PROX_CLAMP") = (int)PROX_CLAMP;
  m.attr("PROX_L1") = (int)PROX_L1;
}
