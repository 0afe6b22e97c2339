// blockadmm CUDA kernels behind the torch-free C interface of blockadmm_cuda.h.
// Compiled by nvcc alone (static cudart); see the header for the contract and the GEMM choice.
#include "blockadmm_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace {

constexpr int BM = 64, BN = 64, BK = 16, NT = 256;  // GEMM tile: 256 threads, 4x4 outputs each
constexpr int AUX_THREADS = 256, AUX_ITEMS = 8;
constexpr int64_t AUX_MAX_BLOCKS = 4096;
constexpr int64_t MAX_GRID_Y = 65535;
constexpr float LEAKY_SLOPE = 0.01f;

#define BAM_TRY(x)                                 \
  do {                                             \
    cudaError_t e_ = (x);                          \
    if (e_ != cudaSuccess) return static_cast<int>(e_); \
  } while (0)

__device__ __forceinline__ float ldf(const void* p, int dt, int64_t off) {
  if (dt == BAM_F32) return static_cast<const float*>(p)[off];
  if (dt == BAM_F16) return __half2float(static_cast<const __half*>(p)[off]);
  return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[off]);
}

__device__ __forceinline__ void stf(void* p, int dt, int64_t off, float v) {
  if (dt == BAM_F32) static_cast<float*>(p)[off] = v;
  else if (dt == BAM_F16) static_cast<__half*>(p)[off] = __float2half_rn(v);
  else static_cast<__nv_bfloat16*>(p)[off] = __float2bfloat16_rn(v);
}

// Out-of-line versions for the unrolled GEMM epilogues: inlining a three-way dtype switch into each of
// the 16 unrolled elements lets the compiler unswitch them combinatorially (minutes of ptxas, 60k-line PTX).
__device__ __noinline__ float ldf_ool(const void* p, int dt, int64_t off) { return ldf(p, dt, off); }
__device__ __noinline__ void stf_ool(void* p, int dt, int64_t off, float v) { stf(p, dt, off, v); }

// Sum over the block; the result is valid in thread 0. Contains __syncthreads.
__device__ float block_sum(float v) {
  __shared__ float sh[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  const int nwarps = (blockDim.x + 31) >> 5;
  v = (threadIdx.x < nwarps) ? sh[threadIdx.x] : 0.f;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// ---------------------------------------------------------------------------------------------
// aux_dual_update: one pass, grid-stride, per-block partial sums of the squared primal residual.
template <int PROX, bool SIGN>
__global__ void __launch_bounds__(AUX_THREADS) aux_dual_kernel(void* z, void* u, int zdt, const void* a, int adt,
                                                               const void* g, int gdt, const int64_t* index,
                                                               int64_t numel, int64_t cols, float rho, float lr,
                                                               float dual, float lo, float hi, float thr,
                                                               float* partials) {
  float acc = 0.f;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < numel; e += stride) {
    int64_t zo = e;
    if (index != nullptr) {
      const int64_t i = e / cols;
      zo = index[i] * cols + (e - i * cols);
    }
    const float zj = ldf(z, zdt, zo), uj = ldf(u, zdt, zo), ai = ldf(a, adt, e);
    float s = rho * (zj - ai + uj);
    if (g != nullptr) s = s + ldf(g, gdt, e);
    if (SIGN) s = s > 0.f ? 1.f : (s < 0.f ? -1.f : s);
    float zn = zj - lr * s;
    if (PROX == BAM_PROX_CLAMP) {
      zn = zn < lo ? lo : zn;
      zn = zn > hi ? hi : zn;
    } else if (PROX == BAM_PROX_L1) {
      float mag = fabsf(zn) - thr;
      mag = mag > 0.f ? mag : 0.f;
      zn = zn > 0.f ? mag : (zn < 0.f ? -mag : zn * mag);
    }
    const float diff = zn - ai;
    stf(u, zdt, zo, uj + dual * diff);
    stf(z, zdt, zo, zn);
    acc += diff * diff;
  }
  const float tot = block_sum(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = tot;
}

// ---------------------------------------------------------------------------------------------
// Shared-memory tiled products (float32 accumulation), any strides, masked edges.
struct Op {
  const void* p;
  int dt;
  int64_t s0, s1;
};

struct Tiles {
  float a[BK][BM];  // A tile stored k-major so the inner loop reads a column of A contiguously
  float b[BK][BN];
};

__device__ __forceinline__ void tile_product(const Op& A, const Op& B, int64_t M, int64_t N, int64_t K, int64_t m0,
                                             int64_t n0, float (&acc)[4][4], Tiles& t) {
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  for (int64_t k0 = 0; k0 < K; k0 += BK) {
    for (int e = tid; e < BM * BK; e += NT) {
      const int r = e / BK, c = e % BK;
      const int64_t gr = m0 + r, gc = k0 + c;
      t.a[c][r] = (gr < M && gc < K) ? ldf(A.p, A.dt, gr * A.s0 + gc * A.s1) : 0.f;
    }
    for (int e = tid; e < BK * BN; e += NT) {
      const int r = e / BN, c = e % BN;
      const int64_t gr = k0 + r, gc = n0 + c;
      t.b[r][c] = (gr < K && gc < N) ? ldf(B.p, B.dt, gr * B.s0 + gc * B.s1) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = t.a[kk][ty * 4 + i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = t.b[kk][tx * 4 + j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }
}

__global__ void __launch_bounds__(NT) gemm_kernel(Op A, Op B, void* C, int cdt, int64_t M, int64_t N, int64_t K) {
  __shared__ Tiles t;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * BM, n0 = static_cast<int64_t>(blockIdx.x) * BN;
  float acc[4][4] = {};
  tile_product(A, B, M, N, K, m0, n0, acc, t);
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t r = m0 + ty * 4 + i, c = n0 + tx * 4 + j;
      if (r < M && c < N) stf_ool(C, cdt, r * N + c, acc[i][j]);
    }
}

// O = X * (A @ B) / (X @ G + l1 + l2*X + eps): both products stay in registers.
__global__ void __launch_bounds__(NT) nmf_mu_kernel(Op X, void* O, Op A, Op B, const float* G, int64_t M, int64_t R,
                                                    int64_t K, float l1, float l2, float eps) {
  __shared__ Tiles t;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * BM, n0 = static_cast<int64_t>(blockIdx.x) * BN;
  float num[4][4] = {}, den[4][4] = {};
  tile_product(A, B, M, R, K, m0, n0, num, t);
  const Op Gop{G, BAM_F32, R, 1};
  tile_product(X, Gop, M, R, R, m0, n0, den, t);  // ends with __syncthreads: all reads of X are done
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t r = m0 + ty * 4 + i, c = n0 + tx * 4 + j;
      if (r < M && c < R) {
        const int64_t off = r * X.s0 + c * X.s1;
        const float xv = ldf_ool(X.p, X.dt, off);
        stf_ool(O, X.dt, off, xv * num[i][j] / (den[i][j] + l1 + l2 * xv + eps));
      }
    }
}

template <int ACT>
__device__ __forceinline__ float act_fwd(float x, float& d) {
  if (ACT == BAM_ACT_IDENTITY) { d = 1.f; return x; }
  if (ACT == BAM_ACT_RELU) { d = x > 0.f ? 1.f : 0.f; return x < 0.f ? 0.f : x; }
  if (ACT == BAM_ACT_LEAKY) { d = x > 0.f ? 1.f : LEAKY_SLOPE; return x > 0.f ? x : LEAKY_SLOPE * x; }
  if (ACT == BAM_ACT_SIGMOID) { const float s = 1.f / (1.f + expf(-x)); d = s * (1.f - s); return s; }
  const float th = tanhf(x);
  d = 1.f - th * th;
  return th;
}

// pre = x W^T + b, then the residual / activation-derivative epilogue, loss and bias partials.
template <int ACT>
__global__ void __launch_bounds__(NT) linear_fwd_kernel(Op X, Op Wt, const void* b, int bdt, const void* z, int zdt,
                                                        const void* u, int udt, void* out, int odt, float* gp,
                                                        int64_t M, int64_t N, int64_t K, float scale,
                                                        float* loss_partials, float* bias_partials) {
  __shared__ Tiles t;
  __shared__ float colsum[16][BN];
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * BM, n0 = static_cast<int64_t>(blockIdx.x) * BN;
  float acc[4][4] = {};
  tile_product(X, Wt, M, N, K, m0, n0, acc, t);
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  float lsum = 0.f, cs[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t r = m0 + ty * 4 + i, c = n0 + tx * 4 + j;
      if (r < M && c < N) {
        const float pre = acc[i][j] + (b != nullptr ? ldf_ool(b, bdt, c) : 0.f);
        float d;
        const float y = act_fwd<ACT>(pre, d);
        const int64_t off = r * N + c;
        const float res = y - ldf_ool(z, zdt, off) - ldf_ool(u, udt, off);
        stf_ool(out, odt, off, y);
        const float gv = scale * res * d;
        gp[off] = gv;
        lsum += res * res;
        cs[j] += gv;
      }
    }
#pragma unroll
  for (int j = 0; j < 4; ++j) colsum[ty][tx * 4 + j] = cs[j];
  __syncthreads();
  if (bias_partials != nullptr && threadIdx.x < BN) {
    float s = 0.f;
#pragma unroll
    for (int q = 0; q < 16; ++q) s += colsum[q][threadIdx.x];
    const int64_t c = n0 + threadIdx.x;
    if (c < N) bias_partials[static_cast<int64_t>(blockIdx.y) * N + c] = s;
  }
  const float tot = block_sum(lsum);
  if (threadIdx.x == 0) loss_partials[static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x] = tot;
}

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool dtype_ok(int dt) { return dt == BAM_F32 || dt == BAM_F16 || dt == BAM_BF16; }

int tile_grid(int64_t M, int64_t N, dim3* grid) {
  const int64_t gy = cdiv(M, BM), gx = cdiv(N, BN);
  if (gy > MAX_GRID_Y || gx > 0x7fffffffLL) return static_cast<int>(cudaErrorInvalidConfiguration);
  *grid = dim3(static_cast<unsigned>(gx > 0 ? gx : 1), static_cast<unsigned>(gy > 0 ? gy : 1));
  return 0;
}

}  // namespace

extern "C" {

int64_t bam_aux_dual_num_partials(int64_t numel) {
  const int64_t b = cdiv(numel, static_cast<int64_t>(AUX_THREADS) * AUX_ITEMS);
  return b < 1 ? 1 : (b > AUX_MAX_BLOCKS ? AUX_MAX_BLOCKS : b);
}

int bam_aux_dual_update(int device, cudaStream_t stream, void* z, void* u, int zu_dtype, const void* a, int a_dtype,
                        const void* g, int g_dtype, const int64_t* index, int64_t rows, int64_t cols, float rho,
                        float lr, float dual, int prox, float lo, float hi, float thr, int sign, float* partials) {
  if (!partials || rows < 0 || cols < 0) return static_cast<int>(cudaErrorInvalidValue);
  if ((!z || !u || !a) && rows * cols > 0) return static_cast<int>(cudaErrorInvalidValue);
  if (rows < 0 || cols < 0 || !dtype_ok(zu_dtype) || !dtype_ok(a_dtype) ||
      (g && !dtype_ok(g_dtype)) || prox < BAM_PROX_NONE || prox > BAM_PROX_L1)
    return static_cast<int>(cudaErrorInvalidValue);
  BAM_TRY(cudaSetDevice(device));
  const int64_t numel = rows * cols;
  const unsigned grid = static_cast<unsigned>(bam_aux_dual_num_partials(numel));
#define BAM_AUX(P, S)                                                                                       \
  aux_dual_kernel<P, S><<<grid, AUX_THREADS, 0, stream>>>(z, u, zu_dtype, a, a_dtype, g, g_dtype, index, numel, \
                                                          cols, rho, lr, dual, lo, hi, thr, partials)
  if (sign) {
    if (prox == BAM_PROX_CLAMP) BAM_AUX(BAM_PROX_CLAMP, true);
    else if (prox == BAM_PROX_L1) BAM_AUX(BAM_PROX_L1, true);
    else BAM_AUX(BAM_PROX_NONE, true);
  } else {
    if (prox == BAM_PROX_CLAMP) BAM_AUX(BAM_PROX_CLAMP, false);
    else if (prox == BAM_PROX_L1) BAM_AUX(BAM_PROX_L1, false);
    else BAM_AUX(BAM_PROX_NONE, false);
  }
#undef BAM_AUX
  return static_cast<int>(cudaGetLastError());
}

int bam_gemm(int device, cudaStream_t stream, const void* A, int a_dtype, int64_t sa0, int64_t sa1, const void* B,
             int b_dtype, int64_t sb0, int64_t sb1, void* C, int c_dtype, int64_t M, int64_t N, int64_t K) {
  if (!A || !B || !C || M < 0 || N < 0 || K < 0 || !dtype_ok(a_dtype) || !dtype_ok(b_dtype) || !dtype_ok(c_dtype))
    return static_cast<int>(cudaErrorInvalidValue);
  BAM_TRY(cudaSetDevice(device));
  if (M == 0 || N == 0) return 0;
  dim3 grid;
  if (int e = tile_grid(M, N, &grid)) return e;
  gemm_kernel<<<grid, NT, 0, stream>>>(Op{A, a_dtype, sa0, sa1}, Op{B, b_dtype, sb0, sb1}, C, c_dtype, M, N, K);
  return static_cast<int>(cudaGetLastError());
}

int64_t bam_nmf_inplace_max_r(void) { return BN; }

int bam_nmf_mu(int device, cudaStream_t stream, const void* X, int x_dtype, int64_t sx0, int64_t sx1, void* O,
               const void* A, int a_dtype, int64_t sa0, int64_t sa1, const void* B, int b_dtype, int64_t sb0,
               int64_t sb1, const float* G, int64_t M, int64_t R, int64_t K, float l1, float l2, float eps) {
  if (!X || !O || !A || !B || !G || M < 0 || R < 0 || K < 0 || !dtype_ok(x_dtype) || !dtype_ok(a_dtype) ||
      !dtype_ok(b_dtype))
    return static_cast<int>(cudaErrorInvalidValue);
  if (O == X && R > BN) return static_cast<int>(cudaErrorInvalidValue);  // in place needs one column tile
  BAM_TRY(cudaSetDevice(device));
  if (M == 0 || R == 0) return 0;
  dim3 grid;
  if (int e = tile_grid(M, R, &grid)) return e;
  nmf_mu_kernel<<<grid, NT, 0, stream>>>(Op{X, x_dtype, sx0, sx1}, O, Op{A, a_dtype, sa0, sa1},
                                         Op{B, b_dtype, sb0, sb1}, G, M, R, K, l1, l2, eps);
  return static_cast<int>(cudaGetLastError());
}

int64_t bam_linear_grid(int64_t m, int64_t n) { return cdiv(m, BM) * cdiv(n, BN); }
int64_t bam_tile_m(void) { return BM; }

int bam_linear_fwd(int device, cudaStream_t stream, const void* x, int x_dtype, const void* W, int w_dtype,
                   const void* b, int b_dtype, const void* z, int z_dtype, const void* u, int u_dtype, void* out,
                   int out_dtype, float* gp, int64_t m, int64_t n, int64_t k, float scale, int activation,
                   float* loss_partials, float* bias_partials) {
  if (!x || !W || !z || !u || !out || !gp || !loss_partials || m < 0 || n < 0 || k < 0 || !dtype_ok(x_dtype) ||
      !dtype_ok(w_dtype) || (b && !dtype_ok(b_dtype)) || !dtype_ok(z_dtype) || !dtype_ok(u_dtype) ||
      !dtype_ok(out_dtype) || activation < BAM_ACT_IDENTITY || activation > BAM_ACT_TANH)
    return static_cast<int>(cudaErrorInvalidValue);
  BAM_TRY(cudaSetDevice(device));
  if (m == 0 || n == 0) return 0;
  dim3 grid;
  if (int e = tile_grid(m, n, &grid)) return e;
  const Op X{x, x_dtype, k, 1}, Wt{W, w_dtype, 1, k};  // W^T (k x n) read through strides
#define BAM_LIN(A)                                                                                          \
  linear_fwd_kernel<A><<<grid, NT, 0, stream>>>(X, Wt, b, b_dtype, z, z_dtype, u, u_dtype, out, out_dtype, gp, m, \
                                                n, k, scale, loss_partials, bias_partials)
  switch (activation) {
    case BAM_ACT_IDENTITY: BAM_LIN(BAM_ACT_IDENTITY); break;
    case BAM_ACT_RELU: BAM_LIN(BAM_ACT_RELU); break;
    case BAM_ACT_LEAKY: BAM_LIN(BAM_ACT_LEAKY); break;
    case BAM_ACT_SIGMOID: BAM_LIN(BAM_ACT_SIGMOID); break;
    default: BAM_LIN(BAM_ACT_TANH); break;
  }
#undef BAM_LIN
  return static_cast<int>(cudaGetLastError());
}

int bam_device_count(int* count) {
  *count = 0;
  return static_cast<int>(cudaGetDeviceCount(count));
}

int bam_runtime_version(void) {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return v;
}

const char* bam_error_string(int err) { return cudaGetErrorString(static_cast<cudaError_t>(err)); }

}  // extern "C"
