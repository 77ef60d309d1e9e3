"""Cholesky factorisation of large in-memory matrices for solver plugins."""

from __future__ import annotations

import numpy as np

#: Largest order factored by one LAPACK ``dpotrf`` call. The threaded
#: ``dpotrf`` of OpenBLAS 0.3.30 with 32-bit integers, as bundled with SciPy
#: 1.17, crashed with SIGSEGV within a second at orders 22,900, 23,050,
#: 23,100, 23,200, 24,000 and 30,000, and factored order 22,600 (2-core Intel
#: Xeon). One thread factored order 24,000. Larger matrices are factored in
#: blocks of :data:`CHOLESKY_BLOCK`.
LAPACK_CHOLESKY_MAX_ORDER = 16384

#: Block order of the blocked factorisation.
CHOLESKY_BLOCK = 4096


def cholesky_diagonal(
    a: np.ndarray, block: int | None = None
) -> tuple[np.ndarray, int, int | None]:
    """Factor ``a = L L^T`` in place and return the diagonal of L.

    Orders up to :data:`LAPACK_CHOLESKY_MAX_ORDER` take one LAPACK ``dpotrf``
    call. Larger orders, or any order when ``block`` is given, use a
    right-looking blocked factorisation. Each step factors one diagonal
    block with ``dpotrf``, solves the panel below it with BLAS ``dtrsm``, and
    subtracts the panel's outer product from the trailing matrix in column
    strips of ``block`` columns (NumPy ``matmul``). The work is the m**3 / 3
    flops of ``dpotrf``, and the extra memory is one panel and one strip,
    ``16 * m * block`` bytes at most.

    Parameters
    ----------
    a
        Symmetric float64 matrix of order m; only its lower triangle is read,
        and it is overwritten. Fortran order avoids a copy.
    block
        Block order (count), at least 1, or ``None`` for the choice above.

    Returns
    -------
    tuple
        ``(diagonal, info, block)``. ``info`` is 0 on success, and otherwise
        the 1-based index of the first pivot that is not positive, as in
        LAPACK. ``diagonal`` then has no meaning. ``block`` is the block
        order used, or ``None`` for one ``dpotrf`` call.
    """
    from scipy.linalg import lapack

    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(
            f"invalid matrix of shape {a.shape}: Cholesky needs a square 2-D array"
        )
    if block is not None and (
        isinstance(block, bool) or not isinstance(block, (int, np.integer))
    ):
        raise TypeError(f"invalid block = {block!r}: it must be an int or None")
    order = a.shape[0]
    if block is None and order > LAPACK_CHOLESKY_MAX_ORDER:
        block = CHOLESKY_BLOCK
    if block is None:
        factor, info = lapack.dpotrf(a, lower=1, clean=0, overwrite_a=1)
        _check_arguments(info)
        return np.diagonal(factor).copy(), info, None
    if block < 1:
        raise ValueError(f"invalid block = {block}: it must be at least 1")
    diagonal, info = _blocked(a, block)
    return diagonal, info, block


def _blocked(a: np.ndarray, block: int) -> tuple[np.ndarray, int]:
    """Return the diagonal of L and LAPACK's info from a blocked Cholesky."""
    from scipy.linalg import blas, lapack

    order = a.shape[0]
    diagonal = np.empty(order)
    # One product buffer for all strips: a fresh temporary per strip pays the
    # first touch of its pages every time.
    product = np.empty((max(order - block, 0), min(block, order)), order="F")
    for start in range(0, order, block):
        stop = min(start + block, order)
        factor, info = lapack.dpotrf(a[start:stop, start:stop], lower=1, clean=1)
        _check_arguments(info)
        if info > 0:
            return diagonal, start + info
        diagonal[start:stop] = np.diagonal(factor)
        if stop == order:
            break

        # L21 = A21 L11^-T, then A22 -= L21 L21^T in the column strips that
        # cover the lower triangle of A22.
        panel = blas.dtrsm(
            1.0, factor, np.asfortranarray(a[stop:, start:stop]), side=1, lower=1,
            trans_a=1, overwrite_b=1,
        )
        for left in range(0, order - stop, block):
            right = min(left + block, order - stop)
            strip = a[stop + left :, stop + left : stop + right]
            out = product[: strip.shape[0], : strip.shape[1]]
            np.matmul(panel[left:], panel[left:right].T, out=out)
            strip -= out
    return diagonal, 0


def _check_arguments(info: int) -> None:
    """Raise RuntimeError when LAPACK rejected an argument (``info < 0``)."""
    if info < 0:
        raise RuntimeError(
            f"LAPACK dpotrf rejected argument {-info}. This is a bug in "
            "ldbench's Cholesky factorisation, not a property of the matrix"
        )
