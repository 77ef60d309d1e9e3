"""Block storage of the engine: the input matrix, the scratch files and buffers.

Every block is moved as one contiguous float64 buffer. A block (i, j) of the
matrix B that the engine factors is the C-ordered region (rows of block j,
columns of block i) of the input A, so its Fortran-ordered view is
``B_ij`` with ``B = A^T``. ``det B = det A``, and B is A for symmetric input.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ldbench import SolverError

from ._grid import ITEMSIZE, BlockGrid

logger = logging.getLogger(__name__)

Slot = tuple[int, int]


class PoolClosed(RuntimeError):
    """The buffer pool was closed while a thread waited for a buffer."""


class BufferPool:
    """Fixed set of flat float64 buffers, each large enough for the largest block.

    :meth:`acquire` blocks until a buffer is free, which bounds the memory of
    the pipeline and keeps the reader from running too far ahead.

    Parameters
    ----------
    count
        Number of buffers.
    elements
        Float64 entries per buffer.
    allocate
        Function that returns a flat float64 array of a given length; the torch
        backend passes one that returns pinned host memory.
    """

    def __init__(
        self, count: int, elements: int, allocate: Callable[[int], np.ndarray]
    ) -> None:
        self._free = [allocate(elements) for _ in range(count)]
        self._cond = threading.Condition()
        self._closed = False
        self.nbytes = count * elements * ITEMSIZE

    def acquire(self) -> np.ndarray:
        """Return a free buffer, waiting for one to be released."""
        with self._cond:
            while not self._free and not self._closed:
                self._cond.wait()
            if self._closed:
                raise PoolClosed("the buffer pool was closed")
            return self._free.pop()

    def release(self, buffer: np.ndarray) -> None:
        """Return ``buffer`` to the pool."""
        with self._cond:
            self._free.append(buffer)
            self._cond.notify()

    def close(self) -> None:
        """Wake every waiting thread with :class:`PoolClosed`."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def block_view(buffer: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Return the Fortran-ordered ``rows x cols`` view at the start of ``buffer``."""
    return buffer[: rows * cols].reshape(cols, rows).T


class MatrixInput:
    """Read access to the leading ``order x order`` block of a 2-D array-like.

    Parameters
    ----------
    array
        An h5py dataset, a NumPy array or a read-only memory map of a ``.npy``
        file, of shape at least ``(order, order)``.
    order
        Order of the leading block to factor.
    identity
        Text that changes when the input's content changes (a file's path,
        size and modification time), stored in checkpoints so that a
        checkpoint of another matrix is never resumed.
    """

    def __init__(self, array: Any, order: int, identity: str) -> None:
        shape = tuple(array.shape)
        if len(shape) != 2 or shape[0] < order or shape[1] < order:
            raise ValueError(
                f"the input of shape {shape} has no leading block of order {order}"
            )
        self.array = array
        self.order = order
        self.identity = identity
        self._read_direct = getattr(array, "read_direct", None)

    def read_into(self, grid: BlockGrid, slot: Slot, buffer: np.ndarray) -> None:
        """Fill ``buffer`` with block (i, j) of B and check that it is finite.

        Raises
        ------
        SolverError
            When the block contains a NaN or an infinite entry.
        """
        i, j = slot
        # Block (i, j) of B = A^T is the region (block row j, block column i) of A.
        a_rows, a_cols = grid.sizes[j], grid.sizes[i]
        row0, col0 = grid.offset(j), grid.offset(i)
        target = buffer[: a_rows * a_cols].reshape(a_rows, a_cols)
        region = np.s_[row0 : row0 + a_rows, col0 : col0 + a_cols]
        if self._read_direct is not None and self.array.dtype == np.float64:
            self._read_direct(target, source_sel=region)
        else:
            target[...] = self.array[region]
        if not np.isfinite(target).all():
            row, col = np.argwhere(~np.isfinite(target))[0]
            raise SolverError(
                f"matrix entry ({row0 + row}, {col0 + col}) is {target[row, col]}, "
                "but a log-determinant needs finite entries. Check how the matrix "
                "was formed."
            )


def input_from_file(path: Path, dataset: str = "matrix", order: int | None = None):
    """Open an HDF5 dataset or a ``.npy`` file as a :class:`MatrixInput`.

    Returns ``(input, close)``, where ``close()`` closes the file.
    """
    path = Path(path)
    stat = path.stat()
    identity = f"{path.resolve()}:{dataset}:{stat.st_size}:{stat.st_mtime_ns}"
    if path.suffix.lower() == ".npy":
        array = np.load(path, mmap_mode="r")
        order = array.shape[0] if order is None else order
        return MatrixInput(array, order, identity), lambda: None
    import h5py

    handle = h5py.File(path, "r")
    try:
        array = handle[dataset]
    except KeyError:
        handle.close()
        raise ValueError(f"dataset {dataset!r} not found in {str(path)!r}") from None
    order = array.shape[0] if order is None else order
    return MatrixInput(array, order, identity), handle.close


class ScratchFiles:
    """Step files of the trailing matrix, read and written with pread/pwrite.

    ``step-<s>.bin`` holds what step s - 1 wrote: the blocks of the trailing
    matrix that step s starts from, and the transformed panel of step s - 1.
    Each file is laid out compactly from the list of its slots.

    Parameters
    ----------
    folder
        Folder of the step files.
    grid
        Block grid, which fixes each slot's size.
    layouts
        For each step file index s, the slots it contains in file order.
    """

    def __init__(
        self, folder: Path, grid: BlockGrid, layouts: dict[int, list[Slot]]
    ) -> None:
        self.folder = folder
        self.grid = grid
        self._offsets: dict[int, dict[Slot, int]] = {}
        for step, slots in layouts.items():
            offsets: dict[Slot, int] = {}
            position = 0
            for slot in slots:
                offsets[slot] = position
                position += grid.nbytes(*slot)
            self._offsets[step] = offsets
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    def path(self, step: int) -> Path:
        """Return the path of step file ``step``."""
        return self.folder / f"step-{step:04d}.bin"

    def _fd(self, step: int) -> int:
        with self._lock:
            fd = self._fds.get(step)
            if fd is None:
                fd = os.open(self.path(step), os.O_RDWR | os.O_CREAT, 0o644)
                self._fds[step] = fd
            return fd

    def read(self, step: int, slot: Slot, buffer: np.ndarray) -> int:
        """Read ``slot`` of step file ``step`` into ``buffer``; return the bytes."""
        nbytes = self.grid.nbytes(*slot)
        view = memoryview(buffer).cast("B")[:nbytes]
        fd = self._fd(step)
        offset = self._offsets[step][slot]
        done = 0
        while done < nbytes:
            count = os.preadv(fd, [view[done:]], offset + done)
            if count == 0:
                raise OSError(
                    f"{self.path(step)} ended after {offset + done} bytes while "
                    f"reading block {slot}; the scratch file is truncated"
                )
            done += count
        return nbytes

    def write(self, step: int, slot: Slot, buffer: np.ndarray) -> int:
        """Write ``buffer`` to ``slot`` of step file ``step``; return the bytes."""
        nbytes = self.grid.nbytes(*slot)
        view = memoryview(buffer).cast("B")[:nbytes]
        fd = self._fd(step)
        offset = self._offsets[step][slot]
        done = 0
        while done < nbytes:
            done += os.pwritev(fd, [view[done:]], offset + done)
        return nbytes

    def size(self, step: int) -> int:
        """Return the bytes a complete step file ``step`` has."""
        return sum(self.grid.nbytes(*slot) for slot in self._offsets.get(step, {}))

    def sync(self, step: int) -> None:
        """Flush step file ``step`` to the disk."""
        os.fsync(self._fd(step))

    def remove(self, step: int) -> None:
        """Close and delete step file ``step``."""
        with self._lock:
            fd = self._fds.pop(step, None)
        if fd is not None:
            os.close(fd)
        self.path(step).unlink(missing_ok=True)

    def close(self) -> None:
        """Close every open step file."""
        with self._lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)
