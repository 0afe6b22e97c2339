// The OpenMP thread count a kernel uses: the caller's, or OpenMP's default when it passes 0 or less.
#pragma once

#ifdef _OPENMP
#include <omp.h>
#endif

inline int threads_or_default(int nthreads) {
  if (nthreads > 0) return nthreads;
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}
