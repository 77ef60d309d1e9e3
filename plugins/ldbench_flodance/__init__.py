"""FLODANCE solver plugin for ldbench.

FLODANCE estimates ``log det K`` of an NTK-like matrix of n samples from the
log-determinants of its leading blocks of ``k = 1..n_s`` samples, which one
factorisation of the leading ``n_s * d`` block gives. It fits the neural
scaling law ``det K_k / det K_(k-1) ~ c * k**(-nu)`` to them and evaluates the
fit at ``k = n``.
"""

from __future__ import annotations

from collections.abc import Callable

from ldbench import hookimpl

from ._fit import FitSettings, ScalingFit, fit_scaling_law, laurent_sums
from ._solver import FlodanceSolver

__all__ = [
    "FitSettings",
    "FlodanceSolver",
    "ScalingFit",
    "fit_scaling_law",
    "laurent_sums",
]


@hookimpl
def ldbench_register_solvers(register: Callable[[type], None]) -> None:
    """Register :class:`FlodanceSolver`."""
    register(FlodanceSolver)
