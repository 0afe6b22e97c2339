// nmf_hals_update's CUDA kernel behind the torch-free C interface (blockadmm_cuda.h has the contract).
// One warp per row of H: per component t (in the order perm) the 32 lanes form the dot G[t,:]·H[i,:] over
// r = lane, lane+32, … (both reads coalesced; G stays in L1/L2, shared by every row), a butterfly shuffle
// gives every lane the gradient, lane 0 writes H[i,t], and __syncwarp orders that write before the next
// component's reads of the row. Arithmetic in the element type (float32 or float64), as the CPU kernel.
#include "blockadmm_cuda.h"

namespace {

constexpr int HALS_WARPS = 8;  // rows per block

template <typename T>
__global__ void __launch_bounds__(HALS_WARPS * 32)
    nmf_hals_kernel(T* __restrict__ H, const T* __restrict__ A, const T* __restrict__ G,
                    const int64_t* __restrict__ perm, int64_t n, int64_t k, T* __restrict__ viol) {
  const int lane = threadIdx.x & 31;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * HALS_WARPS + (threadIdx.x >> 5);
  if (i >= n) return;  // a whole warp leaves together: the shuffles below see all 32 lanes
  T* h = H + i * k;
  T total = T(0);
  for (int64_t s = 0; s < k; ++s) {
    const int64_t t = perm ? perm[s] : s;
    const T* g = G + t * k;
    T p = T(0);
    for (int64_t r = lane; r < k; r += 32) p += g[r] * h[r];
    for (int o = 16; o > 0; o >>= 1) p += __shfl_xor_sync(0xffffffffu, p, o);
    const T ht = h[t], grad = p - A[i * k + t], hess = g[t];
    const T pg = ht == T(0) ? (grad < T(0) ? grad : T(0)) : grad;
    total += pg < T(0) ? -pg : pg;
    __syncwarp();  // every lane has read h[t] before lane 0 overwrites it
    if (lane == 0 && hess != T(0)) {
      const T v = ht - grad / hess;
      h[t] = v < T(0) ? T(0) : v;  // NaN propagates, as torch.clamp
    }
    __syncwarp();  // the write is visible to the whole warp before the next component's dot
  }
  if (lane == 0) viol[i] = total;
}

}  // namespace

extern "C" {

int bam_nmf_hals_update(int device, cudaStream_t stream, void* H, const void* A, const void* G, const int64_t* perm,
                        int64_t n, int64_t k, int dtype, void* viol) {
  if (n < 0 || k < 0 || (dtype != BAM_F32 && dtype != BAM_F64)) return static_cast<int>(cudaErrorInvalidValue);
  if (n == 0 || k == 0) return 0;
  if (!H || !A || !G || !viol) return static_cast<int>(cudaErrorInvalidValue);
  const int64_t blocks = (n + HALS_WARPS - 1) / HALS_WARPS;
  if (blocks > 0x7fffffffLL) return static_cast<int>(cudaErrorInvalidConfiguration);
  const cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return static_cast<int>(e);
  const dim3 grid(static_cast<unsigned>(blocks)), block(HALS_WARPS * 32);
  if (dtype == BAM_F64)
    nmf_hals_kernel<double><<<grid, block, 0, stream>>>(static_cast<double*>(H), static_cast<const double*>(A),
                                                        static_cast<const double*>(G), perm, n, k,
                                                        static_cast<double*>(viol));
  else
    nmf_hals_kernel<float><<<grid, block, 0, stream>>>(static_cast<float*>(H), static_cast<const float*>(A),
                                                       static_cast<const float*>(G), perm, n, k,
                                                       static_cast<float*>(viol));
  return static_cast<int>(cudaGetLastError());
}

}  // extern "C"
