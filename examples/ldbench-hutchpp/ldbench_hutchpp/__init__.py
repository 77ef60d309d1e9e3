"""Hutch++ log-determinant solver, an example ldbench plugin.

It imports only the public ``ldbench`` API and registers through the
``ldbench`` entry-point group declared in this distribution's pyproject.toml.
"""

from __future__ import annotations

from collections.abc import Callable

from ldbench import hookimpl

from ._solver import HutchppSolver

__all__ = ["HutchppSolver"]


@hookimpl
def ldbench_register_solvers(register: Callable[[type], None]) -> None:
    """Register :class:`HutchppSolver` under the name ``"hutchpp"``."""
    register(HutchppSolver)
