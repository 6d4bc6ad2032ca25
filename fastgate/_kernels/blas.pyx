# cython: language_level=3, boundscheck=False, wraparound=False
"""Row-major GEMM over float32/float64 through scipy.linalg.cython_blas.

Importing this module imports SciPy's BLAS; the recurrent kernels load it only when a plan
computes ``x W`` by BLAS (:func:`row_major_gemm`), so ``import fastgate`` does not.
"""

from cpython.pycapsule cimport PyCapsule_New
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


cdef void sgemm_row_major(blas_int m, blas_int n, blas_int k, float alpha, const float *a,
                          blas_int lda, const float *b, blas_int ldb, float beta, float *c,
                          blas_int ldc) noexcept nogil:
    gemm(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)


cdef void dgemm_row_major(blas_int m, blas_int n, blas_int k, double alpha, const double *a,
                          blas_int lda, const double *b, blas_int ldb, double beta,
                          double *c, blas_int ldc) noexcept nogil:
    gemm(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)


def row_major_gemm():
    """``(sgemm, dgemm)``: capsules holding the row-major float and double GEMMs (the
    signature of :func:`gemm`), for the recurrent kernels."""
    return (PyCapsule_New(<void *> sgemm_row_major, b"fastgate.sgemm_row_major", NULL),
            PyCapsule_New(<void *> dgemm_row_major, b"fastgate.dgemm_row_major", NULL))
