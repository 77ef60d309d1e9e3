"""A user's own matrix, read from an HDF5, NumPy or zarr file.

See :class:`FileSource` for the parameters and the supported formats.
"""

from __future__ import annotations

from collections.abc import Callable

from ldbench import hookimpl

from ._readers import SUPPORTED_EXTENSIONS
from ._source import FileSource

__all__ = ["SUPPORTED_EXTENSIONS", "FileSource", "ldbench_register_sources"]


@hookimpl
def ldbench_register_sources(register: Callable[[type], None]) -> None:
    """Register :class:`FileSource` under the name ``"file"``."""
    register(FileSource)
