"""Matern covariance matrices on seeded points.

The ``matern`` source forms the Matern kernel matrix of n points in the unit
cube (uniform random points or a space-filling design), optionally with
several outputs coupled by a coregionalization matrix. See
:class:`MaternSource` for the parameters.
"""

from __future__ import annotations

from collections.abc import Callable

from ldbench import hookimpl

from ._kernel import matern_correlation
from ._model import DESIGNS, coregionalization_matrix, design_points, sample_points
from ._source import MaternSource

__all__ = [
    "DESIGNS",
    "MaternSource",
    "coregionalization_matrix",
    "design_points",
    "ldbench_register_sources",
    "matern_correlation",
    "sample_points",
]


@hookimpl
def ldbench_register_sources(register: Callable[[type], None]) -> None:
    """Register :class:`MaternSource` under the name ``"matern"``."""
    register(MaternSource)
