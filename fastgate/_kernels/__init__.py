"""Compiled kernels (Cython + BLAS through ``scipy.linalg.cython_blas``).

``blas`` is the only module that knows BLAS; ``recurrent`` holds one kernel per cell family.
Nothing here validates user input: :mod:`fastgate.layers` does that before calling in.
"""
