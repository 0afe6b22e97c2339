/* blockadmm CUDA kernels: a torch-free C interface.
 *
 * Every entry point takes raw device pointers, sizes, the CUDA device ordinal and a cudaStream_t,
 * launches on that stream and returns a cudaError_t (0 = cudaSuccess). Nothing here knows about torch:
 * the Python side (blockadmm/ops/_cuda.py) checks device, dtype, contiguity and sizes, then passes
 * tensor.data_ptr() and torch.cuda.current_stream().cuda_stream.
 *
 * Dtype codes: 0 float32, 1 float16, 2 bfloat16 (3 float64: nmf_hals_update only). All arithmetic is float32 (accumulation included);
 * loads convert, stores round to the destination's dtype.
 *
 * GEMMs are hand-written shared-memory tiles (64x64 output tile, K step 16, 4x4 register micro-tile,
 * float32 FMA, no TF32), not cuBLAS: the toolkit this must build with need not ship cuBLAS (the one in
 * CI does not), a static cuBLAS would make the module hundreds of MB, and a dynamic one would make import
 * depend on a libcublas being on the loader path. Hand-written tiles also let the NMF and linear-block
 * epilogues be fused into the GEMM, which cuBLAS cannot do.
 */
#ifndef BLOCKADMM_CUDA_H
#define BLOCKADMM_CUDA_H

#include <cuda_runtime.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { BAM_F32 = 0, BAM_F16 = 1, BAM_BF16 = 2, BAM_F64 = 3 };
enum { BAM_PROX_NONE = 0, BAM_PROX_CLAMP = 1, BAM_PROX_L1 = 2 };
enum { BAM_ACT_IDENTITY = 0, BAM_ACT_RELU = 1, BAM_ACT_LEAKY = 2, BAM_ACT_SIGMOID = 3, BAM_ACT_TANH = 4 };

/* Number of float partial sums aux_dual_update writes for a batch of `numel` elements. */
int64_t bam_aux_dual_num_partials(int64_t numel);

/* In place: for batch row i, table row j = index ? index[i] : i, column c < cols:
 *   s  = rho*(z[j,c] - a[i,c] + u[j,c]) + (g ? g[i,c] : 0);  s = sign ? sign(s) : s
 *   zn = prox(z[j,c] - lr*s);  u[j,c] += dual*(zn - a[i,c]);  z[j,c] = zn
 * partials[b] (float32, bam_aux_dual_num_partials(rows*cols) of them) gets block b's sum of (zn - a)^2.
 * index is int64 or NULL. z and u share zu_dtype; a and g have their own dtypes. */
int bam_aux_dual_update(int device, cudaStream_t stream, void* z, void* u, int zu_dtype, const void* a, int a_dtype,
                        const void* g, int g_dtype, const int64_t* index, int64_t rows, int64_t cols, float rho,
                        float lr, float dual, int prox, float lo, float hi, float thr, int sign, float* partials);

/* C[M,N] = A[M,K] @ B[K,N] with arbitrary element strides (row, col) for A and B; C is row-major
 * contiguous of dtype c_dtype. */
int bam_gemm(int device, cudaStream_t stream, const void* A, int a_dtype, int64_t sa0, int64_t sa1, const void* B,
             int b_dtype, int64_t sb0, int64_t sb1, void* C, int c_dtype, int64_t M, int64_t N, int64_t K);

/* Fused multiplicative update of X (M x R, strides sx0, sx1):
 *   O = X * (A @ B) / (X @ G + l1 + l2*X + eps)
 * A (M x K) and B (K x R) with arbitrary strides, G (R x R) float32 row-major. The products are formed
 * tile by tile in registers and never written out. O has X's strides and dtype; O may equal X only when
 * R <= bam_nmf_inplace_max_r() (one column tile, so no block reads a row another block writes). */
int bam_nmf_mu(int device, cudaStream_t stream, const void* X, int x_dtype, int64_t sx0, int64_t sx1, void* O,
               const void* A, int a_dtype, int64_t sa0, int64_t sa1, const void* B, int b_dtype, int64_t sb0,
               int64_t sb1, const float* G, int64_t M, int64_t R, int64_t K, float l1, float l2, float eps);
int64_t bam_nmf_inplace_max_r(void);

/* Forward of the linear block with the ADMM residual epilogue fused:
 *   pre = x @ W^T + b;  out = act(pre);  r = out - z - u;  gp = scale * r * act'(pre)
 * x (m x k), W (n x k), b (n) or NULL, z, u, out (m x n) row-major; gp float32 (m x n).
 * loss_partials (float32, one per block: bam_linear_grid(m, n) of them) get sum r^2 per block;
 * bias_partials (float32, ceil(m/64) x n) get the column sums of gp per row tile. */
int bam_linear_fwd(int device, cudaStream_t stream, const void* x, int x_dtype, const void* W, int w_dtype,
                   const void* b, int b_dtype, const void* z, int z_dtype, const void* u, int u_dtype, void* out,
                   int out_dtype, float* gp, int64_t m, int64_t n, int64_t k, float scale, int activation,
                   float* loss_partials, float* bias_partials);
int64_t bam_linear_grid(int64_t m, int64_t n);
int64_t bam_tile_m(void);

/* One HALS / coordinate-descent pass on NMF codes H (n x k, row-major, in place; nmf_hals.cu), dtype BAM_F32 or
 * BAM_F64 for H, A (n x k) and G (k x k) alike; perm (int64, k entries) or NULL for 0..k-1. For each row i and
 * t in perm: grad = G[t,:].H[i,:] - A[i,t]; viol[i] += |H[i,t] == 0 ? min(0, grad) : grad|;
 * H[i,t] = max(H[i,t] - grad / G[t,t], 0) unless G[t,t] == 0. viol (n entries, H's dtype) gets each row's sum. */
int bam_nmf_hals_update(int device, cudaStream_t stream, void* H, const void* A, const void* G, const int64_t* perm,
                        int64_t n, int64_t k, int dtype, void* viol);

/* Device count as the runtime sees it (0 and an error code when there is no usable GPU/driver). */
int bam_device_count(int* count);
int bam_runtime_version(void);
const char* bam_error_string(int err);

#ifdef __cplusplus
}
#endif

#endif /* BLOCKADMM_CUDA_H */
