"""Cheap matrix checks run before a solver: finiteness and symmetry."""

from __future__ import annotations

import logging

import numpy as np

from ._api import MatrixHandle, SolverError, Structure

logger = logging.getLogger(__name__)

BLOCK = 2048  # rows per check block: 16 MiB per 1,024 columns of float64
SYMMETRY_RTOL = 1e-10


class MatrixCheckError(SolverError):
    """The matrix failed a pre-solve check; the message names the block."""


def check_matrix(handle: MatrixHandle, structure: Structure, enabled: bool = True) -> None:
    """Check the readable block of ``handle`` blockwise.

    Raises
    ------
    MatrixCheckError
        On the first block with a NaN or infinity, and, when ``structure``
        requires symmetry, on an asymmetry larger than ``SYMMETRY_RTOL`` times
        the largest absolute entry, naming the largest asymmetry found.
    """
    if not enabled:
        return
    m = handle.order
    scale = 0.0
    worst = (0.0, 0, 0)
    for r0 in range(0, m, BLOCK):
        r1 = min(m, r0 + BLOCK)
        for c0 in range(0, m, BLOCK):
            c1 = min(m, c0 + BLOCK)
            block = handle.block(r0, r1, c0, c1)
            if not np.isfinite(block).all():
                i, j = np.argwhere(~np.isfinite(block))[0]
                raise MatrixCheckError(
                    f"matrix has a non-finite entry {block[i, j]} at row {r0 + i}, "
                    f"column {c0 + j} (block rows {r0}:{r1}, columns {c0}:{c1}); "
                    "fix the matrix source or file"
                )
            scale = max(scale, float(np.abs(block).max(initial=0.0)))
            if structure is not Structure.GENERAL and c0 >= r0:
                mirror = handle.block(c0, c1, r0, r1).T
                diff = np.abs(block - mirror)
                k = int(np.argmax(diff)) if diff.size else 0
                if diff.size and diff.flat[k] > worst[0]:
                    i, j = np.unravel_index(k, diff.shape)
                    worst = (float(diff.flat[k]), r0 + int(i), c0 + int(j))
    if structure is not Structure.GENERAL and worst[0] > SYMMETRY_RTOL * max(scale, 1e-300):
        value, i, j = worst
        raise MatrixCheckError(
            f"matrix is declared {structure.value} but is not symmetric: largest "
            f"asymmetry |A[{i},{j}] - A[{j},{i}]| = {value:.3e} (largest entry "
            f"{scale:.3e}); declare the matrix structure 'general' and use a "
            "solver for general matrices such as LU, or fix the matrix"
        )
