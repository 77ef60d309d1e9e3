"""Log-determinants of every leading sample block from one factorisation."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from ldbench import SolverError, cholesky_diagonal

logger = logging.getLogger(__name__)

__all__ = ["LeadingCurve", "PseudoLogdet", "leading_logdets", "pseudo_logdet"]


@dataclass
class LeadingCurve:
    """Natural log-determinants ``l_k = log|det K_k|`` for ``k = 1..n_s``.

    Attributes
    ----------
    logdets
        ``l_1, ..., l_(n_s)``, shape ``(n_s,)``. NaN where LDL pivoting mixed
        rows across the block edge at ``k*d``, so ``l_k`` is unknown.
    signs
        Sign of ``det K_k`` for each k, shape ``(n_s,)``; NaN where unknown.
    """

    logdets: np.ndarray
    signs: np.ndarray

    def valid(self, k0: int, k1: int) -> bool:
        """Return True when ``l_k`` is known for every k in ``k0..k1``."""
        return bool(np.all(np.isfinite(self.signs[k0 - 1 : k1])))


def leading_logdets(block: np.ndarray, block_size: int, method: str) -> LeadingCurve:
    """Factorise ``block`` once and return ``log|det|`` of its leading blocks.

    Parameters
    ----------
    block
        Symmetric matrix of order ``n_s * block_size``, overwritten.
    block_size
        Rows per sample d; ``l_k`` is read at the block edges ``k*d``.
    method
        ``"cholesky"`` (LAPACK potrf, SPD only) or ``"ldl"`` (Bunch-Kaufman
        sytrf through :func:`scipy.linalg.ldl`).

    Raises
    ------
    SolverError
        When the block contains NaN or inf, or Cholesky finds it not positive
        definite.
    """
    order = block.shape[0]
    if order % block_size:
        raise SolverError(
            f"leading block of order {order} is not a whole number of samples "
            f"of block_size={block_size}"
        )
    if not np.all(np.isfinite(block)):
        raise SolverError(
            f"leading block of order {order} contains NaN or inf; check the "
            "stored matrix"
        )
    if method == "cholesky":
        pivot_logs, pivot_signs, known = _cholesky_pivots(block)
    else:
        pivot_logs, pivot_signs, known = _ldl_pivots(block)
    edges = np.arange(block_size - 1, order, block_size)
    logdets = np.cumsum(pivot_logs)[edges]
    signs = np.cumprod(pivot_signs)[edges]
    logdets[~known[edges]] = np.nan
    signs[~known[edges]] = np.nan
    return LeadingCurve(logdets=logdets, signs=signs)


def _cholesky_pivots(
    block: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``log(L_ii**2)``, unit signs and all-True flags for factor L."""
    # The block is symmetric, so its transpose, a Fortran-ordered view of a
    # C-ordered block, is factored in place.
    target = block.T if block.flags.c_contiguous else block
    diagonal, info, _ = cholesky_diagonal(target)
    if info > 0:
        raise SolverError(
            f"Cholesky factorisation of the leading block of order "
            f"{block.shape[0]} failed at pivot index {info - 1} (0-based), so "
            "the matrix is not positive definite. Use method='ldl' for a "
            "symmetric indefinite matrix"
        )
    size = diagonal.size
    return 2.0 * np.log(diagonal), np.ones(size), np.ones(size, dtype=bool)


def _ldl_pivots(block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return per-row ``log|pivot|``, pivot signs and prefix flags of an LDL^T.

    ``known[i]`` is True when ``log|det A[:i+1, :i+1]|`` equals the sum of the
    first ``i + 1`` entries of the returned logs. That fails inside a 2x2
    pivot, whose log|det| and sign sit at its second row, and where the
    Bunch-Kaufman permutation moved a later row into the first ``i + 1``.
    """
    order = block.shape[0]
    factor, pivots, perm = scipy.linalg.ldl(
        block, lower=True, hermitian=True, overwrite_a=True, check_finite=False
    )
    del factor
    logs = np.zeros(order)
    signs = np.ones(order)
    known = np.ones(order, dtype=bool)
    i = 0
    while i < order:
        if i + 1 < order and pivots[i + 1, i] != 0.0:
            det2 = pivots[i, i] * pivots[i + 1, i + 1] - pivots[i + 1, i] ** 2
            logs[i + 1] = np.log(abs(det2))
            signs[i + 1] = np.sign(det2)
            known[i] = False
            i += 2
        else:
            logs[i] = np.log(abs(pivots[i, i]))
            signs[i] = np.sign(pivots[i, i])
            i += 1
    # With A = F D F^T and F[perm] triangular, A[perm][:, perm] has the leading
    # log-determinants of D. They are those of A where perm maps the prefix
    # 0..i onto itself, which holds exactly when max(perm[:i+1]) == i.
    known &= np.maximum.accumulate(perm) == np.arange(order)
    return logs, signs, known


@dataclass
class PseudoLogdet:
    """Natural log of the pseudo-determinant of a positive semi-definite matrix.

    Attributes
    ----------
    logdet
        Sum of ``log(lambda)`` over the eigenvalues above ``threshold``.
    rank
        Number of those eigenvalues, the numerical rank.
    threshold
        ``max(lambda) * order * eps``; smaller eigenvalues count as zero.
    """

    logdet: float
    rank: int
    threshold: float


def pseudo_logdet(block: np.ndarray) -> PseudoLogdet:
    """Return the log pseudo-determinant of a symmetric PSD ``block``.

    An NTK ``J J^T`` of a network with P parameters and m > P rows has rank
    at most P, so its determinant is 0. The pseudo-determinant, the product
    of its nonzero eigenvalues, is the determinant restricted to the range.
    Eigenvalues at or below ``max(lambda) * order * eps`` count as zero, the
    tolerance ``numpy.linalg.matrix_rank`` uses.

    Raises
    ------
    SolverError
        When an eigenvalue below ``-threshold`` shows that the block is
        indefinite rather than semi-definite.
    """
    eigenvalues = scipy.linalg.eigvalsh(block, overwrite_a=True, check_finite=False)
    largest = float(np.max(np.abs(eigenvalues)))
    threshold = largest * block.shape[0] * np.finfo(np.float64).eps
    if eigenvalues[0] < -threshold:
        raise SolverError(
            f"matrix of order {block.shape[0]} has the negative eigenvalue "
            f"{eigenvalues[0]:.3g}, so it is indefinite and has no "
            "pseudo-determinant as a PSD matrix; use method='ldl'"
        )
    nonzero = eigenvalues[eigenvalues > threshold]
    return PseudoLogdet(float(np.sum(np.log(nonzero))), int(nonzero.size), threshold)
