"""Block kernels on host memory through scipy's BLAS and LAPACK wrappers.

Every block is a Fortran-ordered float64 view of a pool buffer, so BLAS and
LAPACK update it in place (``overwrite_*=1``) without copies. The methods
follow the notation of :mod:`ldbench_ooc._engine`: the symmetric methods
update ``B_ij -= Q_ik P_jk^T`` and LU updates ``B_ij -= L_ik U_kj``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _blas
from ._io import block_view
from ._pivots import (
    BlockLogdet,
    NotPositiveDefinite,
    ZeroPivot,
    cholesky_logdet,
    ldl_logdet,
    lu_logdet,
    swaps_to_permutation,
)

logger = logging.getLogger(__name__)


@dataclass
class Block:
    """One block in memory: the pool buffer it occupies and the array to compute
    on (the buffer's Fortran-ordered view for this backend)."""

    host: np.ndarray
    data: Any
    rows: int
    cols: int
    staged: Any = None


class NumpyBackend:
    """Host backend: blocks are computed on where they were read."""

    name = "cpu"

    def allocate_host(self, elements: int) -> np.ndarray:
        """Return an uninitialised flat float64 buffer."""
        return np.empty(elements, dtype=np.float64)

    def stage_in(self, buffer: np.ndarray, rows: int, cols: int) -> Block:
        """Wrap a freshly read buffer as a block."""
        return Block(buffer, block_view(buffer, rows, cols), rows, cols)

    def ready(self, block: Block) -> Any:
        """Return the array to compute on."""
        return block.data

    def stage_out(self, block: Block) -> None:
        """Make the block's host buffer hold its data; nothing to do on the host."""
        return

    def synchronize(self) -> None:
        """Wait for queued work; host work is never queued."""


def _inplace(result: np.ndarray, target: np.ndarray) -> None:
    """Copy ``result`` into ``target`` unless a wrapper already wrote in place."""
    if not np.shares_memory(result, target):
        target[...] = result


def _check_info(routine: str, info: int) -> None:
    if info < 0:
        raise RuntimeError(
            f"LAPACK {routine} rejected argument {-info}; this is a bug in the "
            "ooc engine, not a property of the matrix"
        )


class NumpyCholesky:
    """Cholesky ``B_kk = L L^T``; the panel is ``P_ik = Q_ik = B_ik L^-T``."""

    def __init__(self, max_size: int) -> None:
        self._factor: np.ndarray | None = None

    def factor(self, diagonal: np.ndarray) -> BlockLogdet:
        from scipy.linalg import lapack

        factor, info = lapack.dpotrf(diagonal, lower=1, clean=0, overwrite_a=1)
        _check_info("dpotrf", info)
        if info > 0:
            raise NotPositiveDefinite(info - 1)
        _inplace(factor, diagonal)
        self._factor = diagonal
        return cholesky_logdet(np.diagonal(diagonal))

    def panel(self, block: np.ndarray) -> np.ndarray:
        _blas.solve_right_lower_transposed(self._factor, block)
        return block

    def update(self, target: np.ndarray, left: np.ndarray, right: np.ndarray) -> None:
        _blas.gemm(-1.0, left, right, 1.0, target, trans_b=True)

    def update_diagonal(
        self, target: np.ndarray, left: np.ndarray, right: np.ndarray
    ) -> None:
        # Q_ik = P_ik here, so the update is a rank-k update of the lower half.
        _blas.syrk(-1.0, right, 1.0, target)


class NumpyLDL:
    """Bunch-Kaufman ``B_kk = P L D L^T P^T`` (scipy.linalg.ldl, lower).

    The panel stored on disk is ``W_ik = B_ik P L^-T`` and the left factor is
    ``Q_ik = W_ik D^-1``, so ``B_ik B_kk^-1 B_jk^T = Q_ik W_jk^T``.
    """

    def __init__(self, max_size: int) -> None:
        self._workspace = np.empty(max_size * max_size, dtype=np.float64)

    def factor(self, diagonal: np.ndarray) -> BlockLogdet:
        from scipy.linalg import ldl

        factor, d, perm = ldl(
            diagonal, lower=True, hermitian=True, overwrite_a=True, check_finite=False
        )
        off = np.diagonal(d, -1).copy()
        # scipy stores each 2x2 pivot of D with its nonzero subdiagonal entry.
        starts = np.flatnonzero(off)
        result, self._inverse = ldl_logdet(np.diagonal(d).copy(), starts, off[starts])
        self._triangle = np.asfortranarray(factor[perm])
        self._perm = perm
        return result

    def panel(self, block: np.ndarray) -> np.ndarray:
        block[...] = block[:, self._perm]
        _blas.solve_right_lower_transposed(self._triangle, block, unit=True)
        left = block_view(self._workspace, *block.shape)
        return self._inverse.apply_right(block, left)

    def update(self, target: np.ndarray, left: np.ndarray, right: np.ndarray) -> None:
        _blas.gemm(-1.0, left, right, 1.0, target, trans_b=True)

    # Q_ik W_ik^T is symmetric, but not a product of one factor with itself, so
    # the diagonal block takes a full dgemm. Only its lower half is used later.
    update_diagonal = update


class NumpyLU:
    """Partial-pivoting ``B_kk = P L U`` (LAPACK ``dgetrf``); the row panel is
    ``U_kj = L^-1 P^T B_kj`` and the column panel ``L_ik = B_ik U^-1``."""

    def __init__(self, max_size: int) -> None:
        self._factor: np.ndarray | None = None

    def factor(self, diagonal: np.ndarray) -> BlockLogdet:
        from scipy.linalg import lapack

        factor, pivots, info = lapack.dgetrf(diagonal, overwrite_a=1)
        _check_info("dgetrf", info)
        if info > 0:
            raise ZeroPivot(info - 1)
        _inplace(factor, diagonal)
        self._factor = diagonal
        self._perm, swaps = swaps_to_permutation(pivots, base=0)
        return lu_logdet(np.diagonal(diagonal), swaps)

    def row_panel(self, block: np.ndarray) -> None:
        block[...] = block[self._perm]
        _blas.solve_left_lower_unit(self._factor, block)

    def column_panel(self, block: np.ndarray) -> None:
        _blas.solve_right_upper(self._factor, block)

    def update(self, target: np.ndarray, left: np.ndarray, right: np.ndarray) -> None:
        _blas.gemm(-1.0, left, right, 1.0, target)


KERNELS = {"cholesky": NumpyCholesky, "ldl": NumpyLDL, "lu": NumpyLU}
