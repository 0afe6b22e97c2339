// pybind11 bindings of the torch-free C interface in blockadmm_cuda.h.
// Pointers and the stream arrive as Python ints (tensor.data_ptr(), torch.cuda.current_stream().cuda_stream);
// every non-zero cudaError_t becomes a RuntimeError naming the call and the CUDA error. Importing this module
// touches no GPU, so it imports on a machine with nvcc and no GPU; calling into it there raises cleanly.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "blockadmm_cuda.h"

namespace py = pybind11;

namespace {

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

cudaStream_t stream_of(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

void check(int err, const char* what) {
  if (err != 0) {
    throw std::runtime_error(std::string("blockadmm._cuda.") + what + ": CUDA error " + std::to_string(err) + " (" +
                             bam_error_string(err) + ")");
  }
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "blockadmm CUDA kernels; torch-free C interface (raw pointers, sizes, device, cudaStream_t)";
  m.attr("LINEAR_RESIDUAL") = "out - z - u";

  m.def("aux_dual_num_partials", &bam_aux_dual_num_partials, py::arg("numel"));
  m.def(
      "aux_dual_update",
      [](int device, uintptr_t stream, uintptr_t z, uintptr_t u, int zu_dtype, uintptr_t a, int a_dtype, uintptr_t g,
         int g_dtype, uintptr_t index, int64_t rows, int64_t cols, float rho, float lr, float dual, int prox, float lo,
         float hi, float thr, bool sign, uintptr_t partials) {
        int err;
        {
          py::gil_scoped_release nogil;
          err = bam_aux_dual_update(device, stream_of(stream), ptr<void>(z), ptr<void>(u), zu_dtype,
                                    ptr<const void>(a), a_dtype, ptr<const void>(g), g_dtype,
                                    ptr<const int64_t>(index), rows, cols, rho, lr, dual, prox, lo, hi, thr,
                                    sign ? 1 : 0, ptr<float>(partials));
        }
        check(err, "aux_dual_update");
      },
      py::arg("device"), py::arg("stream"), py::arg("z"), py::arg("u"), py::arg("zu_dtype"), py::arg("a"),
      py::arg("a_dtype"), py::arg("g"), py::arg("g_dtype"), py::arg("index"), py::arg("rows"), py::arg("cols"),
      py::arg("rho"), py::arg("lr"), py::arg("dual"), py::arg("prox"), py::arg("lo"), py::arg("hi"), py::arg("thr"),
      py::arg("sign"), py::arg("partials"));

  m.def(
      "gemm",
      [](int device, uintptr_t stream, uintptr_t A, int a_dtype, int64_t sa0, int64_t sa1, uintptr_t B, int b_dtype,
         int64_t sb0, int64_t sb1, uintptr_t C, int c_dtype, int64_t M, int64_t N, int64_t K) {
        int err;
        {
          py::gil_scoped_release nogil;
          err = bam_gemm(device, stream_of(stream), ptr<const void>(A), a_dtype, sa0, sa1, ptr<const void>(B),
                         b_dtype, sb0, sb1, ptr<void>(C), c_dtype, M, N, K);
        }
        check(err, "gemm");
      },
      py::arg("device"), py::arg("stream"), py::arg("A"), py::arg("a_dtype"), py::arg("sa0"), py::arg("sa1"),
      py::arg("B"), py::arg("b_dtype"), py::arg("sb0"), py::arg("sb1"), py::arg("C"), py::arg("c_dtype"),
      py::arg("M"), py::arg("N"), py::arg("K"));

  m.def("nmf_inplace_max_r", &bam_nmf_inplace_max_r);
  m.def(
      "nmf_mu",
      [](int device, uintptr_t stream, uintptr_t X, int x_dtype, int64_t sx0, int64_t sx1, uintptr_t O, uintptr_t A,
         int a_dtype, int64_t sa0, int64_t sa1, uintptr_t B, int b_dtype, int64_t sb0, int64_t sb1, uintptr_t G,
         int64_t M, int64_t R, int64_t K, float l1, float l2, float eps) {
        int err;
        {
          py::gil_scoped_release nogil;
          err = bam_nmf_mu(device, stream_of(stream), ptr<const void>(X), x_dtype, sx0, sx1, ptr<void>(O),
                           ptr<const void>(A), a_dtype, sa0, sa1, ptr<const void>(B), b_dtype, sb0, sb1,
                           ptr<const float>(G), M, R, K, l1, l2, eps);
        }
        check(err, "nmf_mu");
      },
      py::arg("device"), py::arg("stream"), py::arg("X"), py::arg("x_dtype"), py::arg("sx0"), py::arg("sx1"),
      py::arg("O"), py::arg("A"), py::arg("a_dtype"), py::arg("sa0"), py::arg("sa1"), py::arg("B"),
      py::arg("b_dtype"), py::arg("sb0"), py::arg("sb1"), py::arg("G"), py::arg("M"), py::arg("R"), py::arg("K"),
      py::arg("l1"), py::arg("l2"), py::arg("eps"));

  m.def("linear_grid", &bam_linear_grid, py::arg("m"), py::arg("n"));
  m.def("tile_m", &bam_tile_m);
  m.def(
      "linear_fwd",
      [](int device, uintptr_t stream, uintptr_t x, int x_dtype, uintptr_t W, int w_dtype, uintptr_t b, int b_dtype,
         uintptr_t z, int z_dtype, uintptr_t u, int u_dtype, uintptr_t out, int out_dtype, uintptr_t gp, int64_t m_,
         int64_t n, int64_t k, float scale, int activation, uintptr_t loss_partials, uintptr_t bias_partials) {
        int err;
        {
          py::gil_scoped_release nogil;
          err = bam_linear_fwd(device, stream_of(stream), ptr<const void>(x), x_dtype, ptr<const void>(W), w_dtype,
                               ptr<const void>(b), b_dtype, ptr<const void>(z), z_dtype, ptr<const void>(u), u_dtype,
                               ptr<void>(out), out_dtype, ptr<float>(gp), m_, n, k, scale, activation,
                               ptr<float>(loss_partials), ptr<float>(bias_partials));
        }
        check(err, "linear_fwd");
      },
      py::arg("device"), py::arg("stream"), py::arg("x"), py::arg("x_dtype"), py::arg("W"), py::arg("w_dtype"),
      py::arg("b"), py::arg("b_dtype"), py::arg("z"), py::arg("z_dtype"), py::arg("u"), py::arg("u_dtype"),
      py::arg("out"), py::arg("out_dtype"), py::arg("gp"), py::arg("m"), py::arg("n"), py::arg("k"),
      py::arg("scale"), py::arg("activation"), py::arg("loss_partials"), py::arg("bias_partials"));

  m.def(
      "nmf_hals_update",
      [](int device, uintptr_t stream, uintptr_t H, uintptr_t A, uintptr_t G, uintptr_t perm, int64_t n, int64_t k,
         int dtype, uintptr_t viol) {
        int err;
        {
          py::gil_scoped_release nogil;
          err = bam_nmf_hals_update(device, stream_of(stream), ptr<void>(H), ptr<const void>(A), ptr<const void>(G),
                                    ptr<const int64_t>(perm), n, k, dtype, ptr<void>(viol));
        }
        check(err, "nmf_hals_update");
      },
      py::arg("device"), py::arg("stream"), py::arg("H"), py::arg("A"), py::arg("G"), py::arg("perm"), py::arg("n"),
      py::arg("k"), py::arg("dtype"), py::arg("viol"));

  m.def("device_count", []() {
    int n = 0;
    const int err = bam_device_count(&n);
    return py::make_tuple(n, err == 0 ? std::string() : std::string(bam_error_string(err)));
  }, "(number of CUDA devices, '' or the CUDA error that explains 0)");
  m.def("runtime_version", &bam_runtime_version, "CUDA runtime version this module links (static)");
}
