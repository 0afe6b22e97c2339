"""Triton kernels and their launch helpers, installed as `blockadmm.kernels`."""
