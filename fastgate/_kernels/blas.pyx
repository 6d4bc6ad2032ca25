# cython: language_level=3, boundscheck=False, wraparound=False
"""Row-major GEMM over float32/float64 through scipy.linalg.cython_blas."""

from scipy.linalg.cython_blas cimport dgemm, sgemm


cdef void gemm(blas_int m, blas_int n, blas_int k, floating alpha,
               const floating *a, blas_int lda, const floating *b, blas_int ldb,
               floating beta, floating *c, blas_int ldc) noexcept nogil:
    """C (m, n) = alpha * A (m, k) @ B (k, n) + beta * C, all row-major with leading dims."""
    cdef char no = b'N'
    if m <= 0 or n <= 0:
        return
    if floating is float:
        sgemm(&no, &no, &n, &m, &k, &alpha, <float *> b, &ldb, <float *> a, &lda, &beta,
              c, &ldc)
    else:
        dgemm(&no, &no, &n, &m, &k, &alpha, <double *> b, &ldb, <double *> a, &lda, &beta,
              c, &ldc)

