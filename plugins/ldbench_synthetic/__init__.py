"""Synthetic SPD matrices whose log-determinant is known in closed form.

The ``synthetic`` source forms ``Q diag(lambda) Q^T`` with a prescribed
spectrum, a scaled identity, or a Kac-Murdock-Szego matrix. See
:class:`SyntheticSource` for the parameters.
"""

from __future__ import annotations

from collections.abc import Callable

from ldbench import hookimpl

from ._source import SyntheticSource

__all__ = ["SyntheticSource", "ldbench_register_sources"]


@hookimpl
def ldbench_register_sources(register: Callable[[type], None]) -> None:
    """Register :class:`SyntheticSource` under the name ``"synthetic"``."""
    register(SyntheticSource)
