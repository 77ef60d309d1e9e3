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

from ldbench import SolverError, cholesky_diagonal

logger = logging.getLogger(__name__)

FactorResult = tuple[float, float, dict[str, Any]]


def cholesky_logdet(a: np.ndarray, block: int | None = None) -> FactorResult:
    """Return the log-determinant of a symmetric positive-definite matrix.

    Only the lower triangle of ``a`` is read. :func:`ldbench.cholesky_diagonal`
    factors it with LAPACK ``dpotrf``, in blocks of ``block`` when given and
    for orders above ``LAPACK_CHOLESKY_MAX_ORDER``.

    Raises
    ------
    SolverError
        When a pivot is not positive, with the 0-based index of that pivot.
    """
    diagonal, info, used = cholesky_diagonal(a, block)
    if info > 0:
        raise SolverError(
            f"Cholesky factorisation failed at pivot index {info - 1} (0-based): "
            f"the leading {info}x{info} block is not positive definite, so the "
            "matrix is indefinite or singular. Use method 'ldl' or 'lu', which "
            "accept indefinite matrices and return -inf for an exactly singular "
            "one, or add a positive shift to the diagonal."
        )
    logabsdet = 2.0 * float(np.sum(np.log(diagonal)))
    details: dict[str, Any] = {"lapack": "dpotrf"}
    if used is not None:
        details["blocked"] = used
    return logabsdet, 1.0, details


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
