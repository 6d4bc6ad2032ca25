# The BLAS shim: the one place in fastgate that talks to BLAS.
#
# Row-major products over the ``floating`` fused type, forwarded to the single- or
# double-precision routine of scipy.linalg.cython_blas (Fortran, column-major). A row-major
# matrix is the transpose of the same memory read column-major, so C = A @ B (row-major) is
# C^T = B^T @ A^T (column-major): the operands are swapped once, here.
from cython cimport floating

include "_config.pxi"   # written by setup.py: ctypedef of blas_int (int or SciPy's blas_int)

cdef void gemm(blas_int m, blas_int n, blas_int k, floating alpha,
               const floating *a, blas_int lda, const floating *b, blas_int ldb,
               floating beta, floating *c, blas_int ldc) noexcept nogil
