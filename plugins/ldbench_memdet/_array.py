"""Array-like view of a handle's leading block, read from HDF5 on demand."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ldbench import MatrixHandle, SolverError

logger = logging.getLogger(__name__)


class LeadingBlockArray:
    """Read-only 2-D array-like over the readable leading block of a handle.

    ``detkit.memdet`` needs ``shape``, ``dtype`` and basic slicing from its
    input. This view gives it exactly that and reads every requested block with
    :meth:`ldbench.MatrixHandle.block`, so the matrix stays on disk, and rows
    or columns past ``matrix.order`` of a larger stored dataset are never read.
    Blocks are returned as float64, which is also the precision memdet
    computes in. Each block is checked for NaN and infinite entries as it is
    read, which costs one pass over data that is already in memory.

    Parameters
    ----------
    matrix
        Handle whose leading ``matrix.order x matrix.order`` block is exposed.
    """

    ndim = 2
    dtype = np.dtype(np.float64)

    def __init__(self, matrix: MatrixHandle) -> None:
        self._matrix = matrix
        self.shape = (matrix.order, matrix.order)
        self.nbytes = self.dtype.itemsize * matrix.order * matrix.order

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple) or len(key) != 2:
            raise TypeError(
                f"LeadingBlockArray takes a (rows, columns) index, got {key!r}"
            )
        row0, row1, squeeze_row = _bounds(key[0], self.shape[0])
        col0, col1, squeeze_col = _bounds(key[1], self.shape[1])
        block = self._matrix.block(row0, row1, col0, col1)
        _check_finite(block, row0, col0)
        if squeeze_row:
            block = block[0]
        if squeeze_col:
            block = block[..., 0]
        return block


def _check_finite(block: np.ndarray, row0: int, col0: int) -> None:
    """Raise SolverError naming the first NaN or infinite entry of ``block``."""
    bad = ~np.isfinite(block)
    if not bad.any():
        return
    row, col = np.argwhere(bad)[0]
    raise SolverError(
        f"matrix entry ({row0 + row}, {col0 + col}) is {block[row, col]}, but a "
        "log-determinant needs finite entries. Check how the matrix was formed."
    )


def _bounds(index: Any, size: int) -> tuple[int, int, bool]:
    """Return ``(start, stop, is_integer)`` of a unit-step slice or an integer."""
    if isinstance(index, (int, np.integer)):
        position = int(index) + size if index < 0 else int(index)
        if not 0 <= position < size:
            raise IndexError(f"index {index} is out of range for size {size}")
        return position, position + 1, True
    if isinstance(index, slice):
        start, stop, step = index.indices(size)
        if step != 1:
            raise TypeError(
                f"LeadingBlockArray supports unit-step slices only, got {index!r}"
            )
        return start, max(start, stop), False
    raise TypeError(
        f"LeadingBlockArray supports integers and slices, got {type(index).__name__}"
    )
