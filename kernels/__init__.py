"""Triton kernels and their launch helpers, installed as `blockadmm.kernels` (one file per op).

    aux_dual.py      fused auxiliary/dual update, plain and indexed, every built-in prox, step grad/sign
    nmf.py           fused Lee-Seung multiplicative update (numerator and denominator GEMMs + epilogue)
    nmf_hals.py      HALS / coordinate-descent pass on NMF codes (a row tile in registers, loop over components)
    linear_block.py  linear block forward GEMM with the residual/activation epilogue, backward GEMMs
    matmul.py        the plain strided GEMM the last two share (Gram matrices, backward products)

They run compiled on CUDA tensors and, with TRITON_INTERPRET=1 set before import, on CPU tensors
(that is how CI tests them). blockadmm.ops registers them as the "triton" backend.
"""
