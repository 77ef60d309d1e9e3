"""Block storage of the engine: the input matrix, the scratch files and buffers.

Every block is moved as one contiguous float64 buffer. A block (i, j) of the
matrix B that the engine factors is the C-ordered region (rows of block j,
columns of block i) of the input A, so its Fortran-ordered view is
``B_ij`` with ``B = A^T``. ``det B = det A``, and B is A for symmetric input.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from ldbench import SolverError

from ._grid import ALIGN, ITEMSIZE, BlockGrid, round_up

logger = logging.getLogger(__name__)

Slot = tuple[int, int]

def aligned_buffer(allocate: Callable[[int], np.ndarray], elements: int) -> np.ndarray:
    """Return a flat float64 buffer of at least ``elements`` entries whose
    address and length are multiples of :data:`ALIGN`, as direct I/O needs.

    ``allocate`` returns a flat float64 array of a given length. The buffer is
    a view into a slightly longer one.
    """
    per = ALIGN // ITEMSIZE
    padded = round_up(elements * ITEMSIZE) // ITEMSIZE
    raw = allocate(padded + per)
    skip = (-raw.ctypes.data % ALIGN) // ITEMSIZE
    return raw[skip : skip + padded]


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
        backend passes one that returns pinned host memory. Each buffer is
        aligned for direct I/O (:func:`aligned_buffer`).
    """

    def __init__(
        self, count: int, elements: int, allocate: Callable[[int], np.ndarray]
    ) -> None:
        self._free = [aligned_buffer(allocate, elements) for _ in range(count)]
        self._cond = threading.Condition()
        self._closed = False
        # What was allocated, with the alignment slack of each buffer.
        self.nbytes = count * (round_up(elements * ITEMSIZE) + ALIGN)

    def acquire(self, wait: bool = True) -> np.ndarray | None:
        """Return a free buffer, waiting for one to be released.

        With ``wait=False``, return ``None`` at once when no buffer is free.
        """
        with self._cond:
            if not wait and not self._free and not self._closed:
                return None
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
        shape = tuple(getattr(array, "shape", ()))
        dtype = np.dtype(getattr(array, "dtype", np.float64))
        if dtype.kind not in "fiub":
            raise ValueError(
                f"the input has entries of type {dtype}, but the engine factors "
                "real matrices; convert it to float64"
            )
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

    def prefetch(self, grid: BlockGrid, slot: Slot) -> None:
        """Ask the kernel to start reading block (i, j) of B into its cache."""
        if self._chunks is not None:
            i, j = slot
            self._chunks.prefetch(
                grid.offset(j), grid.offset(i), grid.sizes[j], grid.sizes[i]
            )

    def read_into(
        self,
        grid: BlockGrid,
        slot: Slot,
        buffer: np.ndarray,
        helper: Executor | None = None,
    ) -> None:
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
            self._chunks.read(row0, col0, target, helper)
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


def _pread_full(fd: int, view: memoryview, offset: int, what: str) -> None:
    """Fill ``view`` from ``fd`` at ``offset``; raise OSError if the file ends."""
    done = 0
    nbytes = len(view)
    while done < nbytes:
        count = os.preadv(fd, [view[done:]], offset + done)
        if count == 0:
            raise OSError(f"the file ended after {offset + done} bytes inside {what}")
        done += count


def _will_need(fd: int, offset: int, nbytes: int) -> None:
    """Start read-ahead of a file range (``POSIX_FADV_WILLNEED``).

    The hint is optional, so an error from the call is ignored.
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None:
        try:
            advise(fd, offset, nbytes, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass


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
        # One chunk buffer per thread that may read at the same time.
        self._buffers = [np.empty(chunks, dtype=np.float64) for _ in range(2)]

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

    def _tiles(self, row0: int, col0: int, rows: int, cols: int) -> list[tuple]:
        """Return ``(top, left)`` of every chunk that overlaps the region."""
        chunk_rows, chunk_cols = self.chunks
        return [
            (top, left)
            for top in range(row0 - row0 % chunk_rows, row0 + rows, chunk_rows)
            for left in range(col0 - col0 % chunk_cols, col0 + cols, chunk_cols)
        ]

    def read(
        self, row0: int, col0: int, target: np.ndarray, helper: Executor | None = None
    ) -> None:
        """Fill the C-ordered ``target`` with the region starting at (row0, col0).

        With ``helper``, a second thread reads half of the chunks.
        """
        tiles = self._tiles(row0, col0, *target.shape)
        if helper is None or len(tiles) < 2:
            self._read_tiles(tiles, row0, col0, target, 0)
            return
        half = len(tiles) // 2
        other = helper.submit(self._read_tiles, tiles[half:], row0, col0, target, 1)
        try:
            self._read_tiles(tiles[:half], row0, col0, target, 0)
        finally:
            other.result()

    def _read_tiles(
        self, tiles: list[tuple], row0: int, col0: int, target: np.ndarray, which: int
    ) -> None:
        rows, cols = target.shape
        chunk_rows, chunk_cols = self.chunks
        buffer = self._buffers[which]
        view = memoryview(buffer).cast("B")
        for top, left in tiles:
            r0, r1 = max(top, row0), min(top + chunk_rows, row0 + rows)
            c0, c1 = max(left, col0), min(left + chunk_cols, col0 + cols)
            region = target[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0]
            offset = self.offsets.get((top, left))
            if offset is None:
                region[...] = self.fill
                continue
            _pread_full(self._fd, view, offset, f"the HDF5 chunk at ({top}, {left})")
            region[...] = buffer[r0 - top : r1 - top, c0 - left : c1 - left]

    def prefetch(self, row0: int, col0: int, rows: int, cols: int) -> None:
        """Ask the kernel to start reading the chunks of a region into its cache."""
        nbytes = self._buffers[0].nbytes
        for tile in self._tiles(row0, col0, rows, cols):
            offset = self.offsets.get(tile)
            if offset is not None:
                _will_need(self._fd, offset, nbytes)

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
        if not isinstance(array, h5py.Dataset):
            raise TypeError(f"{dataset!r} in {str(path)!r} is a group, not a dataset")
        if order is None:
            order = array.shape[0] if array.shape else 0
        source = MatrixInput(array, order, identity)
    except KeyError:
        handle.close()
        raise ValueError(f"dataset {dataset!r} not found in {str(path)!r}") from None
    except BaseException:
        handle.close()
        raise

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


def _takes_direct_io(folder: Path) -> bool:
    """Return whether files in ``folder`` can be opened with ``O_DIRECT``."""
    if not hasattr(os, "O_DIRECT"):
        return False
    probe = folder / "direct-io-probe"
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
    except OSError as exc:
        # Some file systems (ramfs) create the file before they reject the flag.
        probe.unlink(missing_ok=True)
        if exc.errno != errno.EINVAL:
            raise
        logger.info(
            "%s rejects O_DIRECT, so the step files go through the page cache", folder
        )
        return False
    os.close(fd)
    probe.unlink()
    return True


class ScratchFiles:
    """Step files of the trailing matrix, read and written with pread/pwrite.

    Step file s holds what step s - 1 wrote: the blocks of the trailing
    matrix that step s starts from, and the transformed panel of step s - 1.
    Each step file is laid out compactly from the list of its slots. Step
    files rotate over a few files on disk, ``trailing-<s mod files>.bin``. After
    the first steps, every write then lands on pages that are already in the
    page cache instead of allocating new ones. The engine makes sure
    that a newer checkpoint exists before a step overwrites the file that an
    older checkpoint points to.

    Parameters
    ----------
    folder
        Folder of the step files.
    grid
        Block grid, which fixes each slot's size.
    layouts
        For each step file index s, the slots it contains in file order.
    files
        Number of files that the step files rotate over. Two suffice when a
        checkpoint only has to survive a killed process. With three, a step
        writes into the file of the checkpoint two steps back, so the flush of
        the last checkpoint to the disk can run while the next step computes.
    direct
        Open the files with ``O_DIRECT``, so blocks move between the buffers
        and the disk by DMA, bypassing the page cache. Every slot then starts
        at a multiple of :data:`ALIGN` bytes, and buffers must be aligned
        (:func:`aligned_buffer`). Where the file system rejects ``O_DIRECT``
        (tmpfs on older kernels, for one), the files go through the page cache.
    """

    def __init__(
        self,
        folder: Path,
        grid: BlockGrid,
        layouts: dict[int, list[Slot]],
        files: int = 2,
        direct: bool = False,
    ) -> None:
        self.folder = folder
        self.grid = grid
        self.files = files
        self.direct = direct and _takes_direct_io(folder)
        self._offsets: dict[int, dict[Slot, int]] = {}
        self._sizes: dict[int, int] = {}
        for step, slots in layouts.items():
            offsets: dict[Slot, int] = {}
            position = 0
            for slot in slots:
                offsets[slot] = position
                position += self._span(slot)
            self._offsets[step] = offsets
            self._sizes[step] = position
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    def path(self, step: int) -> Path:
        """Return the path of the file that contains step file ``step``."""
        return self.folder / f"trailing-{step % self.files}.bin"

    def _span(self, slot: Slot) -> int:
        """Return the bytes that ``slot`` takes in a file and in one transfer."""
        nbytes = self.grid.nbytes(*slot)
        return round_up(nbytes) if self.direct else nbytes

    def _fd(self, step: int) -> int:
        with self._lock:
            fd = self._fds.get(step % self.files)
            if fd is None:
                flags = os.O_RDWR | os.O_CREAT | (os.O_DIRECT if self.direct else 0)
                fd = os.open(self.path(step), flags, 0o644)
                self._fds[step % self.files] = fd
            return fd

    def _view(self, buffer: np.ndarray, slot: Slot) -> memoryview:
        """Return the bytes of ``buffer`` that one transfer of ``slot`` moves."""
        span = self._span(slot)
        view = memoryview(buffer).cast("B")[:span]
        if self.direct and (buffer.ctypes.data % ALIGN or len(view) < span):
            raise ValueError(
                f"direct I/O of block {slot} needs a buffer aligned to {ALIGN} bytes "
                f"with room for {span} bytes; allocate it with aligned_buffer"
            )
        return view

    def read(
        self,
        step: int,
        slot: Slot,
        buffer: np.ndarray,
        helper: Executor | None = None,
    ) -> int:
        """Read ``slot`` of step file ``step`` into ``buffer``; return the bytes.

        With ``helper``, a second thread reads the second half of the block:
        two threads copied from the page cache at 9.5 GB/s on the 2-core Xeon
        of the benchmark, one thread at 6.3 GB/s.
        """
        fd = self._fd(step)
        view = self._view(buffer, slot)
        offset = self._offsets[step][slot]
        what = f"block {slot} of {self.path(step)}; the scratch file is truncated"
        nbytes = self.grid.nbytes(*slot)
        half = (len(view) // 2) - (len(view) // 2) % ALIGN
        if helper is None or half == 0:
            _pread_full(fd, view, offset, what)
            return nbytes
        other = helper.submit(_pread_full, fd, view[half:], offset + half, what)
        try:
            _pread_full(fd, view[:half], offset, what)
        finally:
            other.result()
        return nbytes

    def prefetch(self, step: int, slot: Slot) -> None:
        """Ask the kernel to start reading ``slot`` of step file ``step`` into
        its page cache. Direct I/O has no cache to fill, so it does nothing."""
        if not self.direct:
            _will_need(
                self._fd(step), self._offsets[step][slot], self.grid.nbytes(*slot)
            )

    def write(self, step: int, slot: Slot, buffer: np.ndarray) -> int:
        """Write ``buffer`` to ``slot`` of step file ``step``; return the bytes."""
        fd = self._fd(step)
        view = self._view(buffer, slot)
        offset = self._offsets[step][slot]
        done = 0
        try:
            while done < len(view):
                done += os.pwritev(fd, [view[done:]], offset + done)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"writing block {slot} to {self.path(step)} failed: {exc.strerror}. "
                "Free space on that disk or choose another scratch folder "
                "(checkpoint_dir, or the run folder that --out names)",
                str(self.path(step)),
            ) from exc
        return self.grid.nbytes(*slot)

    def start_writeback(self, step: int, slot: Slot) -> None:
        """Start writing ``slot`` of step file ``step`` to the disk (Linux
        ``sync_file_range``), so that the flush before a checkpoint finds
        little left to do. Does nothing where the call does not exist."""
        function = _sync_file_range()
        if function is not None and not self.direct:
            offset = self._offsets[step][slot]
            function(self._fd(step), offset, self.grid.nbytes(*slot),
                     _SYNC_FILE_RANGE_WRITE)

    def size(self, step: int) -> int:
        """Return the bytes a complete step file ``step`` has."""
        return self._sizes.get(step, 0)

    def sync(self, step: int) -> None:
        """Flush step file ``step`` to the disk."""
        os.fsync(self._fd(step))

    def close(self) -> None:
        """Close every open step file."""
        with self._lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)
