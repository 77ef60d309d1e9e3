"""Shared test helpers: in-memory block writers and HDF5-backed handles."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from ldbench import MatrixHandle, MatrixInfo, MatrixSource, Structure


class ArrayWriter:
    """BlockWriter that fills a dense NumPy array, for source tests."""

    def __init__(self, order: int) -> None:
        self.order = order
        self.array = np.full((order, order), np.nan)
        self.phases: dict[str, dict[str, float]] = {}
        self.done: set[str] = set()

    def write(self, row: int, col: int, block: np.ndarray) -> None:
        rows, cols = block.shape
        assert row + rows <= self.order
        assert col + cols <= self.order
        self.array[row : row + rows, col : col + cols] = block

    def add_phase(self, name: str, seconds: float, flops: float = 0.0) -> None:
        phase = self.phases.setdefault(name, {"seconds": 0.0, "flops": 0.0})
        phase["seconds"] += seconds
        phase["flops"] += flops

    def is_done(self, tag: str) -> bool:
        return tag in self.done

    def mark_done(self, tag: str) -> None:
        self.done.add(tag)


def form_dense(source: MatrixSource, order: int | None = None) -> np.ndarray:
    """Form ``source`` (or its leading block of ``order``) as a dense array."""
    order = source.describe().order if order is None else order
    writer = ArrayWriter(order)
    source.form(order, writer)
    assert not np.isnan(writer.array).any(), "source left blocks unwritten"
    return writer.array


def write_handle(
    path: Path,
    array: np.ndarray,
    structure: Structure = Structure.GENERAL,
    block_size: int = 1,
    order: int | None = None,
) -> MatrixHandle:
    """Store ``array`` as dataset "matrix" in ``path`` and return a handle."""
    with h5py.File(path, "w") as f:
        f.create_dataset("matrix", data=np.asarray(array, dtype=np.float64))
    info = MatrixInfo(order=array.shape[0], structure=structure, block_size=block_size)
    return MatrixHandle(path, info, order)


@pytest.fixture
def handle_factory(tmp_path: Path):
    """Return a function that stores an array and returns a MatrixHandle."""
    counter = iter(range(10**6))

    def make(array: np.ndarray, **kwargs) -> MatrixHandle:
        return write_handle(tmp_path / f"m{next(counter)}.h5", array, **kwargs)

    return make
