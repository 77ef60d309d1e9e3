"""Stochastic Lanczos quadrature log-determinants through ``imate`` as an ldbench
solver."""

from __future__ import annotations

from collections.abc import Callable

from ldbench import hookimpl

from ._solver import SlqSolver

__all__ = ["SlqSolver"]


@hookimpl
def ldbench_register_solvers(register: Callable[[type], None]) -> None:
    """Register :class:`SlqSolver` under the name ``"slq"``."""
    register(SlqSolver)
