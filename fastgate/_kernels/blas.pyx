# cython: language_level=3, boundscheck=False, wraparound=False
"""Row-major GEMM and GEMV over float32/float64 through scipy.linalg.cython_blas."""

from scipy.linalg.cython_blas cimport dgemm, dgemv, sgemm, sgemv


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


cdef void gemv(blas_int k, blas_int n, floating alpha, const floating *x,
               const floating *b, blas_int ldb, floating beta, floating *y) noexcept nogil:
    """y (n,) = alpha * x (k,) @ B (k, n) + beta * y, B row-major with leading dim ldb."""
    cdef char no = b'N'
    cdef blas_int one = 1
    if n <= 0:
        return
    if floating is float:
        sgemv(&no, &n, &k, &alpha, <float *> b, &ldb, <float *> x, &one, &beta, y, &one)
    else:
        dgemv(&no, &n, &k, &alpha, <double *> b, &ldb, <double *> x, &one, &beta, y, &one)


def gemm_for_tests(floating[:, ::1] a, floating[:, ::1] b, floating[:, ::1] c,
                   floating alpha=1, floating beta=0):
    """c = alpha * a @ b + beta * c (for tests of the shim only)."""
    if a.shape[1] != b.shape[0] or c.shape[0] != a.shape[0] or c.shape[1] != b.shape[1]:
        raise ValueError("gemm_for_tests: incompatible shapes")
    if a.shape[0] and b.shape[1]:
        gemm(<blas_int> a.shape[0], <blas_int> b.shape[1], <blas_int> a.shape[1], alpha,
             &a[0, 0] if a.shape[1] else NULL, <blas_int> max(a.shape[1], 1),
             &b[0, 0] if b.shape[0] else NULL, <blas_int> b.shape[1], beta, &c[0, 0],
             <blas_int> c.shape[1])


def gemv_for_tests(floating[::1] x, floating[:, ::1] b, floating[::1] y,
                   floating alpha=1, floating beta=0):
    """y = alpha * x @ b + beta * y (for tests of the shim only)."""
    if x.shape[0] != b.shape[0] or y.shape[0] != b.shape[1] or x.shape[0] == 0:
        raise ValueError("gemv_for_tests: incompatible shapes")
    gemv(<blas_int> b.shape[0], <blas_int> b.shape[1], alpha, &x[0], &b[0, 0],
         <blas_int> b.shape[1], beta, &y[0])
