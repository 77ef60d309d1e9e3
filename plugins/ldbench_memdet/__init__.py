"""Out-of-core block log-determinants through ``detkit.memdet`` as an ldbench
solver."""

from __future__ import annotations

from collections.abc import Callable

from ldbench import hookimpl

from ._solver import MemdetSolver

__all__ = ["MemdetSolver"]


@hookimpl
def ldbench_register_solvers(register: Callable[[type], None]) -> None:
    """Register :class:`MemdetSolver` under the name ``"memdet"``."""
    register(MemdetSolver)
