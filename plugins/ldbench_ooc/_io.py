"""Block storage of the engine: the input matrix, the scratch files and buffers.

Every block is moved as one contiguous float64 buffer. A block (i, j) of the
matrix B that the engine factors is the C-ordered region (rows of block j,
columns of block i) of the input A, so its Fortran-ordered view is
``B_ij`` with ``B = A^T``. ``det B = det A``, and B is A for symmetric input.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import threading
from collections.abc import Callable
from functools import cache
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
        self._chunks = RawChunks.open(array)

    def close(self) -> None:
        """Close the raw file descriptor of the chunk reader, if any."""
        if self._chunks is not None:
            self._chunks.close()

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
        if self._chunks is not None:
            self._chunks.read(row0, col0, target)
        elif self._read_direct is not None and self.array.dtype == np.float64:
            self._read_direct(target, source_sel=region)
        else:
            target[...] = self.array[region]
        # A finite sum proves every entry finite in one pass without a mask;
        # the full scan runs only when the sum is not finite.
        if not math.isfinite(float(target.sum())) and not np.isfinite(target).all():
            row, col = np.argwhere(~np.isfinite(target))[0]
            raise SolverError(
                f"matrix entry ({row0 + row}, {col0 + col}) is {target[row, col]}, "
                "but a log-determinant needs finite entries. Check how the matrix "
                "was formed."
            )


class RawChunks:
    """Reads regions of an uncompressed, chunked float64 HDF5 dataset with pread.

    HDF5's own selection path reads a 1,875 x 1,875 region of a dataset with
    512 x 512 chunks at about 0.7 GB/s on a 2-core Xeon, and spends that time
    on a CPU core that BLAS needs. Reading each overlapping chunk from its file
    offset into a small reused buffer and copying the overlap is several times
    faster. Only datasets that store raw little-endian float64 chunks in a
    plain file qualify; :meth:`open` returns ``None`` for any other input.

    Parameters
    ----------
    path
        HDF5 file.
    shape, chunks
        Dataset shape and chunk shape (entries).
    offsets
        File offset in bytes of each allocated chunk, keyed by the chunk's
        (first row, first column).
    fill
        Value of the entries of chunks that were never written.
    """

    def __init__(
        self,
        path: str,
        shape: tuple[int, int],
        chunks: tuple[int, int],
        offsets: dict[tuple[int, int], int],
        fill: float,
    ) -> None:
        self.shape = shape
        self.chunks = chunks
        self.offsets = offsets
        self.fill = fill
        self._fd = os.open(path, os.O_RDONLY)
        self._buffer = np.empty(chunks, dtype=np.float64)

    @classmethod
    def open(cls, array: Any) -> RawChunks | None:
        """Return a reader for ``array``, or ``None`` when it does not qualify."""
        try:
            import h5py
        except ImportError:  # pragma: no cover - h5py is a dependency
            return None
        if not isinstance(array, h5py.Dataset) or array.chunks is None:
            return None
        if array.dtype.str != "<f8" or array.ndim != 2 or array.file.driver != "sec2":
            return None
        if array.id.get_create_plist().get_nfilters() != 0:
            return None
        offsets: dict[tuple[int, int], int] = {}

        def record(info: Any) -> None:
            if info.filter_mask == 0:
                offsets[tuple(info.chunk_offset)] = info.byte_offset

        try:
            array.id.chunk_iter(record)
        except (AttributeError, RuntimeError):  # HDF5 older than 1.12.3
            return None
        return cls(
            array.file.filename, array.shape, array.chunks, offsets,
            float(array.fillvalue),
        )

    def read(self, row0: int, col0: int, target: np.ndarray) -> None:
        """Fill the C-ordered ``target`` with the region starting at (row0, col0)."""
        rows, cols = target.shape
        chunk_rows, chunk_cols = self.chunks
        nbytes = self._buffer.nbytes
        view = memoryview(self._buffer).cast("B")
        for top in range(row0 - row0 % chunk_rows, row0 + rows, chunk_rows):
            for left in range(col0 - col0 % chunk_cols, col0 + cols, chunk_cols):
                r0, r1 = max(top, row0), min(top + chunk_rows, row0 + rows)
                c0, c1 = max(left, col0), min(left + chunk_cols, col0 + cols)
                region = target[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0]
                offset = self.offsets.get((top, left))
                if offset is None:
                    region[...] = self.fill
                    continue
                done = 0
                while done < nbytes:
                    count = os.preadv(self._fd, [view[done:]], offset + done)
                    if count == 0:
                        raise OSError(
                            f"the HDF5 file ended inside the chunk at ({top}, {left})"
                        )
                    done += count
                region[...] = self._buffer[r0 - top : r1 - top, c0 - left : c1 - left]

    def close(self) -> None:
        """Close the file descriptor."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


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
    source = MatrixInput(array, order, identity)

    def close() -> None:
        source.close()
        handle.close()

    return source, close


#: ``SYNC_FILE_RANGE_WRITE`` of Linux: start writeback without waiting for it.
_SYNC_FILE_RANGE_WRITE = 2


@cache
def _sync_file_range() -> Any:
    """Return libc's ``sync_file_range``, or ``None`` where there is none."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


class ScratchFiles:
    """Step files of the trailing matrix, read and written with pread/pwrite.

    Step file s holds what step s - 1 wrote: the blocks of the trailing
    matrix that step s starts from, and the transformed panel of step s - 1.
    Each step file is laid out compactly from the list of its slots. Step
    files alternate between two files on disk, ``trailing-0.bin`` and
    ``trailing-1.bin``: step s reads one and writes the other, so after the
    first two steps every write lands on pages the page cache already holds
    instead of allocating new ones, which cost a 2-core virtual machine ten
    times more per byte. The engine records step s's checkpoint before step
    s + 1 writes anything, so the file a checkpoint points to is never
    overwritten before a newer checkpoint exists.

    Parameters
    ----------
    folder
        Folder of the step files.
    grid
        Block grid, which fixes each slot's size.
    layouts
        For each step file index s, the slots it contains in file order.
    writeback
        Start writing each block to the disk as soon as it is written (Linux
        ``sync_file_range``), so that the ``fsync`` before a checkpoint
        finds little left to flush and does not hold up the next step's
        writes.
    """

    def __init__(
        self,
        folder: Path,
        grid: BlockGrid,
        layouts: dict[int, list[Slot]],
        writeback: bool = False,
    ) -> None:
        self.folder = folder
        self.grid = grid
        self._writeback = _sync_file_range() if writeback else None
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
        """Return the path of the file that holds step file ``step``."""
        return self.folder / f"trailing-{step % 2}.bin"

    def _fd(self, step: int) -> int:
        with self._lock:
            fd = self._fds.get(step % 2)
            if fd is None:
                fd = os.open(self.path(step), os.O_RDWR | os.O_CREAT, 0o644)
                self._fds[step % 2] = fd
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
        if self._writeback is not None:
            self._writeback(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)
        return nbytes

    def size(self, step: int) -> int:
        """Return the bytes a complete step file ``step`` has."""
        return sum(self.grid.nbytes(*slot) for slot in self._offsets.get(step, {}))

    def sync(self, step: int) -> None:
        """Flush step file ``step`` to the disk."""
        os.fsync(self._fd(step))

    def close(self) -> None:
        """Close every open step file."""
        with self._lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)
