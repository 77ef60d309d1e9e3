"""ldbench's own out-of-core block Cholesky, LDL and LU log-determinant solver.

The matrix stays on disk: blocks are read from the store's HDF5 dataset, the
trailing matrix lives in scratch files, and reads and writes overlap the BLAS
work on background threads. See :mod:`ldbench_ooc._engine` for the scheme.
"""

from __future__ import annotations

from collections.abc import Callable

from ldbench import hookimpl

from ._engine import EngineResult, FactorizationError, factorize
from ._grid import BlockGrid, io_volume
from ._io import MatrixInput, input_from_file
from ._solver import OocSolver

__all__ = [
    "BlockGrid",
    "EngineResult",
    "FactorizationError",
    "MatrixInput",
    "OocSolver",
    "factorize",
    "input_from_file",
    "io_volume",
]


@hookimpl
def ldbench_register_solvers(register: Callable[[type], None]) -> None:
    """Register :class:`OocSolver` under the name ``"ooc"``."""
    register(OocSolver)
