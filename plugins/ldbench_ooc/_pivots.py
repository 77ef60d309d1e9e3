"""Log-determinants of the factors of one diagonal block.

Every function returns natural logs of absolute values and a sign, so that a
determinant that overflows or underflows float64 still gives the right value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class ZeroPivot(ArithmeticError):
    """A diagonal block has an exactly zero pivot (LU or LDL), at ``index``."""

    def __init__(self, index: int) -> None:
        super().__init__(f"zero pivot at index {index} of the diagonal block")
        self.index = index


class NotPositiveDefinite(ArithmeticError):
    """Cholesky met a pivot that is not positive, at ``index`` of the block."""

    def __init__(self, index: int) -> None:
        super().__init__(f"pivot {index} of the diagonal block is not positive")
        self.index = index


@dataclass
class BlockLogdet:
    """Log-determinant of one factored diagonal block.

    Attributes
    ----------
    logabsdet
        Natural log of ``|det|`` of the block.
    sign
        Sign of the determinant: -1 or 1.
    counts
        Integer figures summed over the blocks into the estimate's details,
        such as the number of 2x2 pivots or of row interchanges.
    """

    logabsdet: float
    sign: float
    counts: dict[str, int] = field(default_factory=dict)


def cholesky_logdet(diagonal: np.ndarray) -> BlockLogdet:
    """Return the log-determinant ``2 sum log L_ii`` from the diagonal of L."""
    return BlockLogdet(2.0 * float(np.sum(np.log(diagonal))), 1.0)


def lu_logdet(diagonal: np.ndarray, interchanges: int) -> BlockLogdet:
    """Return the log-determinant from the diagonal of U and the number of row
    interchanges of the partial pivoting."""
    if not np.all(diagonal != 0):
        raise ZeroPivot(int(np.flatnonzero(diagonal == 0)[0]))
    negatives = int(np.count_nonzero(diagonal < 0))
    sign = -1.0 if (negatives + interchanges) % 2 else 1.0
    logabsdet = float(np.sum(np.log(np.abs(diagonal))))
    return BlockLogdet(logabsdet, sign, {"row_interchanges": interchanges})


def swaps_to_permutation(pivots: np.ndarray, base: int) -> tuple[np.ndarray, int]:
    """Turn LAPACK ``getrf`` row interchanges into a permutation.

    ``pivots[r]`` is the row swapped with row r (``base`` is 0 or 1), so
    ``rows[perm]`` is ``P^T rows``. Returns the permutation and the number of
    interchanges that swap two different rows.
    """
    perm = np.arange(pivots.size)
    swaps = 0
    for row, other in enumerate((pivots - base).tolist()):
        if other != row:
            perm[row], perm[other] = perm[other], perm[row]
            swaps += 1
    return perm, swaps


def two_by_two_starts(negative: np.ndarray) -> np.ndarray:
    """Return the first index of each 2x2 pivot of a Bunch-Kaufman factorisation.

    LAPACK ``sytrf`` marks both rows of a 2x2 pivot with a negative ``ipiv``,
    so a run of marked rows is read in pairs from its start.
    """
    starts: list[int] = []
    second = -1
    for index in np.flatnonzero(negative).tolist():
        if index == second:
            continue
        starts.append(index)
        second = index + 1
    return np.asarray(starts, dtype=np.intp)


@dataclass
class BlockDiagonalInverse:
    """Entries of ``D^-1`` for a symmetric block diagonal D with 1x1 and 2x2
    blocks: the diagonal, and the off-diagonal entry of each 2x2 block that
    starts at ``starts[k]``."""

    diagonal: np.ndarray
    starts: np.ndarray
    off: np.ndarray

    def apply_right(self, w: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Write ``w D^-1`` into ``out`` (both of shape ``rows x order``)."""
        np.multiply(w, self.diagonal[np.newaxis, :], out=out)
        if self.starts.size:
            first, second = self.starts, self.starts + 1
            out[:, first] += w[:, second] * self.off
            out[:, second] += w[:, first] * self.off
        return out


def ldl_logdet(
    diagonal: np.ndarray, starts: np.ndarray, off: np.ndarray
) -> tuple[BlockLogdet, BlockDiagonalInverse]:
    """Return the log-determinant of D and the entries of ``D^-1``.

    ``diagonal`` is the diagonal of D, ``starts`` the first index of each 2x2
    block and ``off`` that block's off-diagonal entry.

    Raises
    ------
    ZeroPivot
        When D is singular.
    """
    single = np.ones(diagonal.size, dtype=bool)
    single[starts] = False
    single[starts + 1] = False
    d_single = diagonal[single]
    if not np.all(d_single != 0):
        raise ZeroPivot(int(np.flatnonzero(single)[np.flatnonzero(d_single == 0)[0]]))
    a = diagonal[starts]
    c = diagonal[starts + 1]
    # det [[a, e], [e, c]] = e^2 ((a / e)(c / e) - 1), so that neither a c nor
    # e^2 can overflow on its own. Bunch-Kaufman picks a 2x2 pivot only when
    # its off-diagonal entry e is nonzero.
    scaled = (a / off) * (c / off) - 1.0
    if not np.all(scaled != 0):
        raise ZeroPivot(int(starts[np.flatnonzero(scaled == 0)[0]]))
    logabsdet = float(np.sum(np.log(np.abs(d_single))))
    logabsdet += float(np.sum(2.0 * np.log(np.abs(off)) + np.log(np.abs(scaled))))
    negatives = int(np.count_nonzero(d_single < 0) + np.count_nonzero(scaled < 0))
    sign = -1.0 if negatives % 2 else 1.0

    inverse_diagonal = np.empty_like(diagonal)
    inverse_diagonal[single] = 1.0 / d_single
    determinant = off * off * scaled
    inverse_diagonal[starts] = c / determinant
    inverse_diagonal[starts + 1] = a / determinant
    inverse = BlockDiagonalInverse(inverse_diagonal, starts, -off / determinant)
    result = BlockLogdet(logabsdet, sign, {"pivots_2x2": int(starts.size)})
    return result, inverse


def combine(parts: list[BlockLogdet]) -> tuple[float, float, dict[str, Any]]:
    """Return the summed log-determinant, the product of signs and summed counts."""
    logabsdet = math.fsum(part.logabsdet for part in parts)
    sign = 1.0
    counts: dict[str, int] = {}
    for part in parts:
        sign *= part.sign
        for key, value in part.counts.items():
            counts[key] = counts.get(key, 0) + value
    return logabsdet, sign, counts
