"""Log-determinants from LAPACK factorisations of an in-memory matrix.

Each function factors ``a`` in place and returns ``(logabsdet, sign, details)``,
where ``logabsdet`` is the natural log of ``|det a|`` summed from the logs of
the factor's pivots, so determinants that overflow or underflow float64 still
give the right value. ``a`` must be a float64 array in Fortran order, which lets
LAPACK work on it without a copy.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from ldbench import SolverError

logger = logging.getLogger(__name__)

FactorResult = tuple[float, float, dict[str, Any]]


#: Largest order factored by one LAPACK ``dpotrf`` call. The threaded
#: ``dpotrf`` of OpenBLAS 0.3.30 with 32-bit integers, as bundled with SciPy
#: 1.17, crashed with SIGSEGV within a second at orders 22,900, 23,050,
#: 23,100, 23,200, 24,000 and 30,000, and factored order 22,600 (2-core Intel
#: Xeon). One thread factored order 24,000. Larger matrices are factored by
#: :func:`blocked_cholesky_logdet`, which keeps every ``dpotrf`` call at or
#: below :data:`CHOLESKY_BLOCK`.
LAPACK_CHOLESKY_MAX_ORDER = 16384

#: Block order of :func:`blocked_cholesky_logdet`.
CHOLESKY_BLOCK = 4096


def cholesky_logdet(a: np.ndarray) -> FactorResult:
    """Return the log-determinant of a symmetric positive-definite matrix.

    Only the lower triangle of ``a`` is read (LAPACK ``dpotrf``). Orders above
    :data:`LAPACK_CHOLESKY_MAX_ORDER` go through
    :func:`blocked_cholesky_logdet`.

    Raises
    ------
    SolverError
        When a pivot is not positive, with the 0-based index of that pivot.
    """
    if a.shape[0] > LAPACK_CHOLESKY_MAX_ORDER:
        return blocked_cholesky_logdet(a)
    from scipy.linalg import lapack

    factor, info = lapack.dpotrf(a, lower=1, clean=0, overwrite_a=1)
    _check_arguments("dpotrf", info)
    if info > 0:
        raise _not_positive_definite(info - 1)
    logabsdet = 2.0 * float(np.sum(np.log(np.diagonal(factor))))
    return logabsdet, 1.0, {"lapack": "dpotrf"}


def blocked_cholesky_logdet(a: np.ndarray, block: int = CHOLESKY_BLOCK) -> FactorResult:
    """Return the log-determinant of ``a`` from a right-looking blocked Cholesky.

    Each step factors one diagonal block with LAPACK ``dpotrf``, solves the
    panel below it with BLAS ``dtrsm``, and subtracts the panel's outer
    product from the lower triangle of the trailing matrix in column strips
    of ``block`` columns (NumPy ``matmul``). The work is the m**3 / 3 flops
    of ``dpotrf``, and the extra memory is one panel and one strip,
    ``16 * m * block`` bytes at most.

    Parameters
    ----------
    a
        Float64 matrix in Fortran order; only its lower triangle is read, and
        it is overwritten.
    block
        Block order (count), at least 1.

    Raises
    ------
    SolverError
        When a pivot is not positive, with the 0-based index of that pivot.
    """
    from scipy.linalg import blas, lapack

    if block < 1:
        raise ValueError(f"block = {block} must be at least 1")
    order = a.shape[0]
    logabsdet = 0.0
    # One product buffer for all strips: a fresh temporary per strip pays the
    # first touch of its pages every time.
    product = np.empty((max(order - block, 0), min(block, order)), order="F")
    for start in range(0, order, block):
        stop = min(start + block, order)
        factor, info = lapack.dpotrf(a[start:stop, start:stop], lower=1, clean=1)
        _check_arguments("dpotrf", info)
        if info > 0:
            raise _not_positive_definite(start + info - 1)
        logabsdet += 2.0 * float(np.sum(np.log(np.diagonal(factor))))
        if stop == order:
            break
        # L21 = A21 L11^-T, then A22 -= L21 L21^T on the lower triangle.
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
    return logabsdet, 1.0, {"lapack": "dpotrf", "blocked": block}


def _not_positive_definite(pivot: int) -> SolverError:
    """Return the error for a Cholesky pivot that is not positive."""
    return SolverError(
        f"Cholesky factorisation failed at pivot index {pivot} (0-based): the "
        f"leading {pivot + 1}x{pivot + 1} block is not positive definite, so the "
        "matrix is indefinite or singular. Use method 'ldl' or 'lu', which accept "
        "indefinite matrices and return -inf for an exactly singular one, or "
        "add a positive shift to the diagonal."
    )


def ldl_logdet(a: np.ndarray) -> FactorResult:
    """Return the log-determinant of a symmetric matrix from its LDL^T factors.

    Uses Bunch-Kaufman pivoting (LAPACK ``dsytrf``) on the lower triangle of
    ``a``. ``D`` is block diagonal with 1x1 and 2x2 blocks, and ``det a`` is the
    product of the blocks' determinants because ``det L = 1`` and the
    symmetric permutation cancels.
    """
    from scipy.linalg import lapack

    order = a.shape[0]
    lwork, info = lapack.dsytrf_lwork(order, lower=1)
    _check_arguments("dsytrf_lwork", info)
    factor, ipiv, info = lapack.dsytrf(
        a, lower=1, lwork=max(int(lwork), 1), overwrite_a=1
    )
    _check_arguments("dsytrf", info)
    if info > 0:
        # D(info, info) is exactly zero, so D and the matrix are singular.
        return -math.inf, 0.0, {"lapack": "dsytrf", "zero_pivot_index": info - 1}
    logabsdet, sign, num_2x2 = _block_diagonal_logdet(factor, ipiv)
    return logabsdet, sign, {"lapack": "dsytrf", "num_2x2_blocks": num_2x2}


def lu_logdet(a: np.ndarray) -> FactorResult:
    """Return the log-determinant of a general matrix from its LU factors.

    Uses partial pivoting (LAPACK ``dgetrf``). The sign is the parity of the
    row interchanges times the signs of the diagonal of ``U``.
    """
    from scipy.linalg import lapack

    factor, piv, info = lapack.dgetrf(a, overwrite_a=1)
    _check_arguments("dgetrf", info)
    if info > 0:
        # U(info, info) is exactly zero, so the matrix is singular.
        return -math.inf, 0.0, {"lapack": "dgetrf", "zero_pivot_index": info - 1}
    diagonal = np.diagonal(factor)
    interchanges = int(np.count_nonzero(piv != np.arange(piv.size)))
    negatives = int(np.count_nonzero(diagonal < 0))
    sign = -1.0 if (interchanges + negatives) % 2 else 1.0
    logabsdet = float(np.sum(np.log(np.abs(diagonal))))
    details = {"lapack": "dgetrf", "row_interchanges": interchanges}
    return logabsdet, sign, details


def _block_diagonal_logdet(
    factor: np.ndarray, ipiv: np.ndarray
) -> tuple[float, float, int]:
    """Return ``(logabsdet, sign, number of 2x2 blocks)`` of ``D`` from ``dsytrf``.

    ``factor`` and ``ipiv`` are the outputs of ``dsytrf`` with ``lower=1``.

    LAPACK marks a 2x2 block ``D[k:k+2, k:k+2]`` by negative ``ipiv[k]`` and
    ``ipiv[k+1]``, so a run of negative entries is read in pairs from its start.
    """
    order = factor.shape[0]
    diagonal = np.diagonal(factor)

    starts: list[int] = []
    pending_second = -1
    for k in np.flatnonzero(ipiv < 0).tolist():
        if k == pending_second:
            continue
        starts.append(k)
        pending_second = k + 1
    first = np.asarray(starts, dtype=np.intp)

    single = np.ones(order, dtype=bool)
    single[first] = False
    single[first + 1] = False
    d_single = diagonal[single]
    logabsdet = float(np.sum(np.log(np.abs(d_single))))
    negatives = int(np.count_nonzero(d_single < 0))

    # det [[a, b], [b, c]] = b^2 * ((a / b) * (c / b) - 1), written so that the
    # product a * c and b^2 cannot overflow. b is nonzero for a 2x2 pivot.
    a = diagonal[first]
    c = diagonal[first + 1]
    b = factor[first + 1, first]
    scaled = (a / b) * (c / b) - 1.0
    with np.errstate(divide="ignore"):
        log_blocks = 2.0 * np.log(np.abs(b)) + np.log(np.abs(scaled))
    logabsdet += float(np.sum(log_blocks))
    negatives += int(np.count_nonzero(scaled < 0))

    if logabsdet == -math.inf:
        return -math.inf, 0.0, len(starts)
    sign = -1.0 if negatives % 2 else 1.0
    return logabsdet, sign, len(starts)


def _check_arguments(routine: str, info: int) -> None:
    """Raise RuntimeError when LAPACK rejected an argument (``info < 0``)."""
    if info < 0:
        raise RuntimeError(
            f"LAPACK {routine} rejected argument {-info}. This is a bug in the "
            "dense solver, not a property of the matrix"
        )
