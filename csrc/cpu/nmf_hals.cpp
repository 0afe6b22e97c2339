// nmf_hals_update's C++ CPU kernel (blockadmm/ops/nmf_hals.py has the contract): one HALS / coordinate-
// descent pass on the codes H (n×k, row-major, in place) given A = V Wᵀ − l1 (n×k) and G = W Wᵀ + l2·I
// (k×k), float32 or float64, the components of each row visited in the order perm. Rows are independent:
// OpenMP shares them out; a thread takes ROWS rows at a time so that each row of G it loads serves ROWS
// dot products (independent accumulation chains, one pass over G[t]). Per row, as scikit-learn's
// _update_cdnmf_fast:
//   grad = G[t,:]·H[i,:] − A[i,t];  violation += |H[i,t] == 0 ? min(0, grad) : grad|
//   if G[t,t] != 0: H[i,t] = max(H[i,t] − grad / G[t,t], 0)     (NaN propagates, as torch.clamp)
// The violation is accumulated per row in the element type, then summed over rows in double.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace {

constexpr int ROWS = 4;

template <typename T>
inline T coordinate_step(T* h, int64_t t, T grad, T hess) {
  const T ht = h[t];
  const T pg = ht == T(0) ? std::min(T(0), grad) : grad;
  if (hess != T(0)) {
    const T v = ht - grad / hess;
    h[t] = v < T(0) ? T(0) : v;
  }
  return std::fabs(pg);
}

// One pass over rows i0..i0+R (R = 1 or ROWS) of H; their violations go to viol[0..R).
template <typename T, int R>
void hals_rows(T* __restrict H, const T* __restrict A, const T* __restrict G, const int64_t* perm, int64_t i0,
               int64_t k, T* viol) {
  static_assert(R == 1 || R == ROWS, "hals_rows: one row or ROWS rows");
  T* h[R];
  for (int j = 0; j < R; ++j) {
    h[j] = H + (i0 + j) * k;
    viol[j] = T(0);
  }
  for (int64_t s = 0; s < k; ++s) {
    const int64_t t = perm ? perm[s] : s;
    const T* __restrict g = G + t * k;
    T acc[R];
    if constexpr (R == 1) {
      T a0 = 0;
      const T* __restrict h0 = h[0];
#pragma omp simd reduction(+ : a0)
      for (int64_t r = 0; r < k; ++r) a0 += g[r] * h0[r];
      acc[0] = a0;
    } else {
      T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
      const T *__restrict h0 = h[0], *__restrict h1 = h[1], *__restrict h2 = h[2], *__restrict h3 = h[3];
#pragma omp simd reduction(+ : a0, a1, a2, a3)
      for (int64_t r = 0; r < k; ++r) {
        const T gr = g[r];
        a0 += gr * h0[r];
        a1 += gr * h1[r];
        a2 += gr * h2[r];
        a3 += gr * h3[r];
      }
      acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
    }
    const T hess = g[t];
    for (int j = 0; j < R; ++j) viol[j] += coordinate_step(h[j], t, acc[j] - A[(i0 + j) * k + t], hess);
  }
}

template <typename T>
double hals_impl(T* H, const T* A, const T* G, const int64_t* perm, int64_t n, int64_t k, int nt) {
  const int64_t blocks = (n + ROWS - 1) / ROWS;
  double total = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : total) num_threads(nt) if (blocks > 1 && n * k * k > 32768)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t i0 = b * ROWS, rows = std::min<int64_t>(ROWS, n - i0);
    T viol[ROWS];
    if (rows == ROWS) {
      hals_rows<T, ROWS>(H, A, G, perm, i0, k, viol);
    } else {
      for (int64_t j = 0; j < rows; ++j) hals_rows<T, 1>(H, A, G, perm, i0 + j, k, viol + j);
    }
    for (int64_t j = 0; j < rows; ++j) total += static_cast<double>(viol[j]);
  }
  return total;
}

int threads_or_default(int nthreads) {
  if (nthreads > 0) return nthreads;
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
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
