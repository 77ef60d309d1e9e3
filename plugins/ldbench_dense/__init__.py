"""In-memory LAPACK log-determinants (Cholesky, LDL, LU) as an ldbench solver."""

from __future__ import annotations

from collections.abc import Callable

from ldbench import hookimpl

from ._solver import DenseSolver

__all__ = ["DenseSolver"]


@hookimpl
def ldbench_register_solvers(register: Callable[[type], None]) -> None:
    """Register :class:`DenseSolver` under the name ``"dense"``."""
    register(DenseSolver)
