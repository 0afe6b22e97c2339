// nmf_hals_update's C++ CPU kernel (blockadmm/ops/nmf_hals.py has the contract): one HALS / coordinate-
// descent pass on the codes H (n×k, row-major, in place) given A = V Wᵀ − l1 (n×k) and G = W Wᵀ + l2·I
// (k×k), float32 or float64, the components of each row visited in the order perm. Per row, as
// scikit-learn's _update_cdnmf_fast:
//   grad = −A[i,t] + Σ_r G[t,r]·H[i,r]  (r in order);  violation += |H[i,t] == 0 ? min(0, grad) : grad|
//   if G[t,t] != 0: H[i,t] = max(H[i,t] − grad / G[t,t], 0)     (NaN propagates, as torch.clamp)
// Rows are independent: OpenMP shares out blocks of R rows (256 bytes of each column), each held transposed
// in a thread-local buffer so that the R gradients advance together in vector registers, G[t,r] broadcast
// (8 independent sums; no horizontal reductions, and the sum order is scikit-learn's). On x86-64 an AVX2
// build of the block kernel is picked at run time (the module is compiled for the baseline ISA). The
// violation is accumulated per row in the element type, then summed over rows in double in row order.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "threads.h"

namespace py = pybind11;

namespace {

#if defined(__GNUC__) && defined(__x86_64__)
#define HALS_X86_DISPATCH 1  // an AVX2 build of the row-block kernel, chosen at run time
#endif

// 32-byte vectors of T (GCC/Clang vector extension; an ISA without them gets the operations split)
template <typename T>
struct Vec32 {
  typedef T type __attribute__((vector_size(32)));
};

// grad[j] += Σ_r g[r]·buf[r·R + j] for the R rows j, r = 0..k−1 in order, in R/W vector registers.
template <typename T, int R>
[[gnu::always_inline]] inline void accumulate(T* __restrict grad, const T* __restrict g, const T* __restrict buf,
                                              int64_t k) {
  using V = typename Vec32<T>::type;
  constexpr int W = sizeof(V) / sizeof(T), NV = R / W;
  static_assert(R % W == 0, "rows per block: a whole number of vectors");
  V acc[NV];
  for (int v = 0; v < NV; ++v) std::memcpy(&acc[v], grad + v * W, sizeof(V));
  for (int64_t r = 0; r < k; ++r) {
    const T gr = g[r];
    const T* hr = buf + r * R;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      V h;
      std::memcpy(&h, hr + v * W, sizeof(V));
      acc[v] += gr * h;
    }
  }
  for (int v = 0; v < NV; ++v) std::memcpy(grad + v * W, &acc[v], sizeof(V));
}

// One pass over the R rows i0..i0+rows (rows <= R) of H, their violations added to viol[0..R). The rows are
// copied transposed into buf (k×R), so that each gradient is a run of vector multiply-adds across the R rows
// (G[t,r] broadcast) summed in scikit-learn's order (−A[i,t] first, then r = 0..k−1: no reassociation), and
// the update is one vector step across the rows. Missing tail rows are zeros with A = 0: they never move.
template <typename T, int R>
[[gnu::always_inline]] inline void hals_block_body(T* __restrict H, const T* __restrict A, const T* __restrict G,
                                                   const int64_t* perm, int64_t i0, int64_t rows, int64_t k,
                                                   T* __restrict buf, T* __restrict viol) {
  for (int64_t r = 0; r < k; ++r)
    for (int j = 0; j < R; ++j) buf[r * R + j] = j < rows ? H[(i0 + j) * k + r] : T(0);
  for (int64_t s = 0; s < k; ++s) {
    const int64_t t = perm ? perm[s] : s;
    const T* __restrict g = G + t * k;
    T grad[R];
    for (int j = 0; j < R; ++j) grad[j] = j < rows ? -A[(i0 + j) * k + t] : T(0);
    accumulate<T, R>(grad, g, buf, k);
    const T hess = g[t];
    T* __restrict ht = buf + t * R;
    if (hess != T(0)) {
#pragma omp simd
      for (int j = 0; j < R; ++j) {
        const T h = ht[j], gj = grad[j];
        const T pg = h == T(0) ? (gj < T(0) ? gj : T(0)) : gj;
        viol[j] += pg < T(0) ? -pg : pg;
        const T v = h - gj / hess;
        ht[j] = v < T(0) ? T(0) : v;  // NaN propagates, as torch.clamp
      }
    } else {
#pragma omp simd
      for (int j = 0; j < R; ++j) {
        const T h = ht[j], gj = grad[j];
        const T pg = h == T(0) ? (gj < T(0) ? gj : T(0)) : gj;
        viol[j] += pg < T(0) ? -pg : pg;
      }
    }
  }
  for (int64_t j = 0; j < rows; ++j)
    for (int64_t r = 0; r < k; ++r) H[(i0 + j) * k + r] = buf[r * R + j];
}

template <typename T, int R>
void hals_block(T* H, const T* A, const T* G, const int64_t* perm, int64_t i0, int64_t rows, int64_t k, T* buf,
                T* viol) {
  hals_block_body<T, R>(H, A, G, perm, i0, rows, k, buf, viol);
}

#ifdef HALS_X86_DISPATCH
template <typename T, int R>
__attribute__((target("avx2"))) void hals_block_avx2(T* H, const T* A, const T* G, const int64_t* perm, int64_t i0,
                                                     int64_t rows, int64_t k, T* buf, T* viol) {
  hals_block_body<T, R>(H, A, G, perm, i0, rows, k, buf, viol);
}
#endif

template <typename T>
double hals_impl(T* H, const T* A, const T* G, const int64_t* perm, int64_t n, int64_t k, int nt) {
  constexpr int R = 256 / sizeof(T);  // rows per block: 8 vectors of 32 bytes, 8 independent sums
  auto block = &hals_block<T, R>;
#ifdef HALS_X86_DISPATCH
  if (__builtin_cpu_supports("avx2")) block = &hals_block_avx2<T, R>;
#endif
  const int64_t blocks = (n + R - 1) / R;
  std::vector<double> partial(blocks);  // per block, summed in block order: the same total for any thread count
  // Below ~1M multiply-adds (~0.1 ms on one core) a parallel region costs more than it saves. Blocks are handed
  // out dynamically: on a shared machine a thread that loses its core holds up one block, not a static share.
#pragma omp parallel num_threads(nt) if (blocks > 1 && n * k * k >= (1 << 20))
  {
    std::vector<T> buf(static_cast<size_t>(k) * R);
#pragma omp for schedule(dynamic)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t i0 = b * R, rows = std::min<int64_t>(R, n - i0);
      T viol[R] = {};
      block(H, A, G, perm, i0, rows, k, buf.data(), viol);
      double sum = 0.0;
      for (int64_t j = 0; j < rows; ++j) sum += static_cast<double>(viol[j]);
      partial[b] = sum;
    }
  }
  double total = 0.0;
  for (const double v : partial) total += v;
  return total;
}

// dtype: 0 float32, 1 float64. perm: int64 pointer or 0 for 0..k-1. Returns the summed violation.
double nmf_hals_update(uintptr_t H, uintptr_t A, uintptr_t G, uintptr_t perm, int64_t n, int64_t k, int dtype,
                       int nthreads) {
  if (n < 0 || k < 0) throw std::invalid_argument("nmf_hals_update: negative size");
  if (dtype != 0 && dtype != 1) throw std::invalid_argument("nmf_hals_update: dtype code " + std::to_string(dtype));
  if (n == 0 || k == 0) return 0.0;
  if (!H || !A || !G) throw std::invalid_argument("nmf_hals_update: null H, A or G pointer");
  const auto* p = reinterpret_cast<const int64_t*>(perm);
  const int nt = threads_or_default(nthreads);
  py::gil_scoped_release release;
  if (dtype == 1)
    return hals_impl<double>(reinterpret_cast<double*>(H), reinterpret_cast<const double*>(A),
                             reinterpret_cast<const double*>(G), p, n, k, nt);
  return hals_impl<float>(reinterpret_cast<float*>(H), reinterpret_cast<const float*>(A),
                          reinterpret_cast<const float*>(G), p, n, k, nt);
}

}  // namespace

void bind_nmf_hals(py::module_& m) {
  m.def("nmf_hals_update", &nmf_hals_update, py::arg("H"), py::arg("A"), py::arg("G"), py::arg("perm"), py::arg("n"),
        py::arg("k"), py::arg("dtype"), py::arg("nthreads") = 0,
        "One HALS pass in place on H (n x k; dtype 0 float32, 1 float64) given A (n x k), G (k x k) and perm "
        "(int64 pointer or 0); returns the violation summed over rows.");
}
