"""ldbench plugin with the ``ntk`` matrix source: neural tangent kernels.

Importing this package needs neither torch nor scikit-learn, because the
source imports them only when it forms a matrix.
"""

from __future__ import annotations

from collections.abc import Callable

from ldbench import hookimpl

from ._source import NTKSource

__all__ = ["NTKSource"]


@hookimpl
def ldbench_register_sources(register: Callable[[type], None]) -> None:
    """Register :class:`NTKSource`."""
    register(NTKSource)
