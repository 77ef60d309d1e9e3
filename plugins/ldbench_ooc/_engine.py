"""Right-looking out-of-core block factorisation with overlapped I/O.

The engine factors B = A^T (``det B = det A``) over an n_b x n_b block grid.
Step k factors the diagonal block B_kk (pivoting only inside it), turns the
panel of block column k into the factors of the Schur complement, and updates
the trailing blocks::

    Cholesky   B_kk = L L^T            P_ik = Q_ik = B_ik L^-T
    LDL        B_kk = P L D L^T P^T    P_ik = B_ik P L^-T,  Q_ik = P_ik D^-1
    (both)     B_ij -= Q_ik P_jk^T     for k < j <= i (lower blocks only)
    LU         B_kk = P L U            U_kj = L^-1 P^T B_kj,  L_ik = B_ik U^-1
               B_ij -= L_ik U_kj       for i, j > k

``log|det A|`` is the sum of the diagonal blocks' log-determinants. A step
holds at most four blocks, or with the panel cache the diagonal block, the
panel and the block being updated (n_b + 1, LU n_b + 2). Blocks move either on
a reader and a writer thread while BLAS works (:class:`_Pipeline`) or in the
compute thread between BLAS calls (:class:`_InlinePipeline`). Step 0 reads
the input, and step k > 0 reads the step file that step k - 1 wrote. After
each step a checkpoint is recorded, so a killed run resumes from the last
finished step.
"""

from __future__ import annotations

import fcntl
import logging
import numbers
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ldbench import SolverError

from ._checkpoint import STATE_NAME, load_state, save_state
from ._grid import (
    METHODS,
    SYMMETRIC_METHODS,
    BlockGrid,
    io_volume,
    memory_bytes,
    pool_blocks,
)
from ._io import BufferPool, MatrixInput, PoolClosed, ScratchFiles, Slot
from ._pivots import BlockLogdet, NotPositiveDefinite, ZeroPivot, combine

logger = logging.getLogger(__name__)

# Step file index 0 is the input matrix, which step 0 reads.
INPUT = 0

#: Values of ``device``: see :func:`make_backend`.
DEVICES = ("cpu", "cuda", "torch-cpu")


class FactorizationError(ArithmeticError):
    """A diagonal block could not be factored. The message gives the row and the cause."""


@dataclass
class EngineResult:
    """Outcome of :func:`factorize`.

    Attributes
    ----------
    logabsdet
        Natural log of ``|det A|``, ``-inf`` when a 1 x 1 grid finds the matrix
        exactly singular.
    sign
        Sign of ``det A``: -1, 0 or 1.
    details
        Block, I/O and timing figures (seconds, bytes), JSON-serialisable.
    """

    logabsdet: float
    sign: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Counters:
    source_read: int = 0
    scratch_read: int = 0
    scratch_written: int = 0
    read_seconds: float = 0.0
    write_seconds: float = 0.0
    io_wait_seconds: float = 0.0
    compute_seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, value: float) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + value)


class _CountedBlock:
    """A block with a reference count: the compute loop and a pending write."""

    def __init__(self, block: Any) -> None:
        self.block = block
        self.refs = 1


def schedule(
    grid: BlockGrid, method: str, start: int, cache_panels: bool = False
) -> tuple[list, list]:
    """Return the reads and writes of steps ``start .. n_b - 1`` in order.

    Each entry is ``(file, slot)``: step file ``file`` (0 is the input) and
    block (i, j). The compute loop consumes reads and issues writes in exactly
    this order.
    """
    count = grid.num_blocks
    reads: list[tuple[int, Slot]] = []
    writes: list[tuple[int, Slot]] = []
    for k in range(start, count):
        rest = range(k + 1, count)
        reads.append((k, (k, k)))
        if cache_panels and method in SYMMETRIC_METHODS:
            for i in rest:
                reads.append((k, (i, k)))
                for j in range(k + 1, i + 1):
                    reads.append((k, (i, j)))
                    writes.append((k + 1, (i, j)))
        elif cache_panels:
            reads.extend((k, (k, j)) for j in rest)
            for i in rest:
                reads.append((k, (i, k)))
                for j in rest:
                    reads.append((k, (i, j)))
                    writes.append((k + 1, (i, j)))
        elif method in SYMMETRIC_METHODS:
            for i in rest:
                reads.append((k, (i, k)))
                if i < count - 1:
                    writes.append((k + 1, (i, k)))
                for j in range(k + 1, i):
                    reads.append((k + 1, (j, k)))
                    reads.append((k, (i, j)))
                    writes.append((k + 1, (i, j)))
                reads.append((k, (i, i)))
                writes.append((k + 1, (i, i)))
        else:
            for j in rest:
                reads.append((k, (k, j)))
                writes.append((k + 1, (k, j)))
            for i in rest:
                reads.append((k, (i, k)))
                for j in rest:
                    reads.append((k + 1, (k, j)))
                    reads.append((k, (i, j)))
                    writes.append((k + 1, (i, j)))
    return reads, writes


def step_layouts(
    grid: BlockGrid, method: str, cache_panels: bool = False
) -> dict[int, list[Slot]]:
    """Return, for each step file, its slots in the order they are written."""
    _, writes = schedule(grid, method, 0, cache_panels)
    layouts: dict[int, list[Slot]] = {}
    for file, slot in writes:
        layouts.setdefault(file, []).append(slot)
    return layouts


def step_flops(grid: BlockGrid, method: str, k: int) -> float:
    """Return the FLOPs of step ``k`` (multiply-add = 2) for the progress bar."""
    sizes = grid.sizes
    size = float(sizes[k])
    rest = [float(s) for s in sizes[k + 1 :]]
    total_rest = sum(rest)
    if method in SYMMETRIC_METHODS:
        return size**3 / 3 + total_rest * size**2 + total_rest**2 * size
    return 2 * size**3 / 3 + 2 * total_rest * size**2 + 2 * total_rest**2 * size


class _PipelineBase:
    """Base of both pipelines: the schedule of one run, its order checks and
    the buffer pool. Subclasses start their threads in :meth:`_start`."""

    #: Whether blocks move on background threads, which sets the pool's size.
    io_threads: ClassVar[bool]

    def __init__(
        self,
        grid: BlockGrid,
        method: str,
        source: MatrixInput | None,
        scratch: ScratchFiles,
        backend: Any,
        start: int,
        commit: Callable[[int], None],
        cache_panels: bool = False,
    ) -> None:
        self.grid = grid
        self.source = source
        self.scratch = scratch
        self.backend = backend
        self.counters = _Counters()
        self.reads, writes = schedule(grid, method, start, cache_panels)
        self.writes = writes
        self._write_order = iter(writes)
        self._commit = commit
        self._cursor = 0
        self.writeback = False
        count = pool_blocks(method, grid.num_blocks, cache_panels, self.io_threads)
        self.pool = BufferPool(count, grid.max_size**2, backend.allocate_host)
        self._start()

    def _start(self) -> None:
        """Set up the pipeline's threads once the pool exists."""
        raise NotImplementedError

    def _next_read(self, file: int, slot: Slot) -> int:
        """Return the schedule index of this read, checking the compute loop's order."""
        expected = self.reads[self._cursor]
        if expected != (file, slot):
            raise RuntimeError(
                f"the compute loop asked for {(file, slot)} but read "
                f"{self._cursor} of the schedule is {expected}; this is a bug"
            )
        self._cursor += 1
        return self._cursor - 1

    def _next_write(self, file: int, slot: Slot) -> None:
        """Check that this write is the next one of the schedule."""
        expected = next(self._write_order)
        if expected != (file, slot):
            raise RuntimeError(
                f"the compute loop wrote {(file, slot)} but the schedule expects "
                f"{expected}; this is a bug"
            )

    def data(self, held: _CountedBlock) -> Any:
        """Return the array of a held block to compute on."""
        return self.backend.ready(held.block)


class _Pipeline(_PipelineBase):
    """Reader and writer threads around the compute loop of one run."""

    io_threads = True

    def _start(self) -> None:
        # A read of a block that this run writes waits until it is written.
        self._written = {key: threading.Event() for key in self.writes}
        self._abort = threading.Event()
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="ooc-read")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="ooc-write")
        self._write_error: BaseException | None = None
        self._pending_writes: list[Future] = []
        self._futures = [self._reader.submit(self._read, key) for key in self.reads]

    # Reader thread -------------------------------------------------------

    def _read(self, key: tuple[int, Slot]) -> Any:
        file, slot = key
        if self._abort.is_set():
            raise PoolClosed("the factorisation stopped")
        buffer = self.pool.acquire()
        try:
            written = self._written.get(key)
            while written is not None and not written.wait(0.5):
                if self._abort.is_set():
                    raise PoolClosed("the factorisation stopped")
            started = time.perf_counter()
            if file == INPUT:
                self.source.read_into(self.grid, slot, buffer)
                self.counters.add("source_read", self.grid.nbytes(*slot))
            else:
                nbytes = self.scratch.read(file, slot, buffer)
                self.counters.add("scratch_read", nbytes)
            block = self.backend.stage_in(
                buffer, self.grid.sizes[slot[0]], self.grid.sizes[slot[1]]
            )
            self.counters.add("read_seconds", time.perf_counter() - started)
            return _CountedBlock(block)
        except BaseException:
            self.pool.release(buffer)
            raise

    # Writer thread -------------------------------------------------------

    def _write(self, key: tuple[int, Slot], held: _CountedBlock, staged: Any) -> None:
        file, slot = key
        try:
            if staged is not None:
                staged()
            started = time.perf_counter()
            nbytes = self.scratch.write(file, slot, held.block.host)
            if self.writeback:
                self.scratch.start_writeback(file, slot)
            self.counters.add("write_seconds", time.perf_counter() - started)
            self.counters.add("scratch_written", nbytes)
            self._written[key].set()
        except BaseException as exc:
            # A read of this block would wait for it forever: stop the reader,
            # and let the compute loop raise this error at its next block.
            if self._write_error is None:
                self._write_error = exc
            self._abort.set()
            self.pool.close()
            raise
        finally:
            self.drop(held)

    # Compute loop --------------------------------------------------------

    def take(self, file: int, slot: Slot) -> _CountedBlock:
        """Return the next block read, which must be ``slot`` of ``file``."""
        index = self._next_read(file, slot)
        future = self._futures[index]
        self._futures[index] = None
        started = time.perf_counter()
        try:
            held = future.result()
        except PoolClosed:
            if self._write_error is not None:
                raise self._write_error from None
            raise
        self.counters.add("io_wait_seconds", time.perf_counter() - started)
        return held

    def write(self, file: int, slot: Slot, held: _CountedBlock) -> None:
        """Queue ``held`` for writing into ``slot`` of step file ``file``.

        The write takes its own reference, so the caller still drops its own.
        """
        self._next_write(file, slot)
        staged = self.backend.stage_out(held.block)
        with self.counters.lock:
            held.refs += 1
        future = self._writer.submit(self._write, (file, slot), held, staged)
        self._pending_writes.append(future)
        self._reap_writes()

    def drop(self, held: _CountedBlock) -> None:
        """Release one reference to ``held``; the last one frees its buffer."""
        with self.counters.lock:
            held.refs -= 1
            free = held.refs == 0
        if free:
            self.pool.release(held.block.host)

    def end_step(self, k: int) -> None:
        """Queue the checkpoint of step ``k`` behind its writes."""
        self._pending_writes.append(self._writer.submit(self._commit, k))
        self._reap_writes()

    def _reap_writes(self) -> None:
        # A failed write stops the run at the next block instead of at the end.
        while self._pending_writes and self._pending_writes[0].done():
            self._pending_writes.pop(0).result()

    def finish(self) -> None:
        """Wait for every queued write and checkpoint."""
        started = time.perf_counter()
        for future in self._pending_writes:
            future.result()
        self._pending_writes.clear()
        self.backend.synchronize()
        self.counters.add("io_wait_seconds", time.perf_counter() - started)

    def close(self) -> None:
        """Stop both threads, also after a failure."""
        self._abort.set()
        self.pool.close()
        self._reader.shutdown(wait=True, cancel_futures=True)
        self._writer.shutdown(wait=True, cancel_futures=True)


class _InlinePipeline(_PipelineBase):
    """Reads and writes in the compute thread, between BLAS calls.

    On a machine with few cores, a background reader or writer takes a core
    from a BLAS thread, and the other BLAS thread then waits for it at the end
    of every call. On the 2-core Xeon of the benchmark, order 15,000 with
    n_b = 8 took 12.1 s with background I/O threads and 9.6 s with the same
    copies done between BLAS calls, against 8.7 s for the block kernels with
    no I/O at all. Here the compute thread reads each block itself. Meanwhile
    a helper thread writes the previous block, or else reads half of the
    block, so both copies run while BLAS is idle. The compute thread also
    asks the kernel to start reading the next block into its cache
    (``posix_fadvise``), so that a block on disk is usually cached by the
    time it is needed. With ``fsync``, checkpoints
    are flushed on a background thread, and a write waits only for the
    checkpoint that must be on the disk before the write's file is reused;
    without it, a checkpoint is an atomic rename in the compute thread.
    """

    # No read runs ahead, and one write runs behind while the next block is
    # read, so the pool has one buffer more than the compute loop's blocks.
    io_threads = False

    def _start(self) -> None:
        self._pending_write: tuple[Future, _CountedBlock] | None = None
        self._helper = ThreadPoolExecutor(1, thread_name_prefix="ooc-read")
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="ooc-commit")
        self._commits: dict[int, Future] = {}
        self._prefetch(0)

    def _prefetch(self, index: int) -> None:
        if index >= len(self.reads):
            return
        file, slot = self.reads[index]
        if file == INPUT:
            self.source.prefetch(self.grid, slot)
        else:
            self.scratch.prefetch(file, slot)

    def take(self, file: int, slot: Slot) -> _CountedBlock:
        """Read and return the next block, which must be ``slot`` of ``file``."""
        self._next_read(file, slot)
        started = time.perf_counter()
        buffer = self.pool.acquire(wait=False)
        if buffer is None:
            self._wait_write()
            buffer = self.pool.acquire()
        # While the helper thread writes the previous block, this thread reads
        # alone; otherwise the helper reads half of the block.
        helper = self._helper if self._pending_write is None else None
        try:
            if file == INPUT:
                self.source.read_into(self.grid, slot, buffer, helper)
                self.counters.add("source_read", self.grid.nbytes(*slot))
            else:
                nbytes = self.scratch.read(file, slot, buffer, helper)
                self.counters.add("scratch_read", nbytes)
            self._wait_write()
            block = self.backend.stage_in(
                buffer, self.grid.sizes[slot[0]], self.grid.sizes[slot[1]]
            )
        except BaseException:
            self.pool.release(buffer)
            raise
        self._prefetch(self._cursor)
        seconds = time.perf_counter() - started
        self.counters.add("read_seconds", seconds)
        self.counters.add("io_wait_seconds", seconds)
        return _CountedBlock(block)

    def write(self, file: int, slot: Slot, held: _CountedBlock) -> None:
        """Start writing ``held`` into ``slot`` of step file ``file`` on the
        helper thread; the next read or checkpoint waits for it."""
        self._next_write(file, slot)
        started = time.perf_counter()
        self._wait_write()
        # Step file s takes the place on disk of step file s - files, which the
        # checkpoint recorded after step s - files - 1 points to. The one
        # recorded after step s - files points to a newer file, so it must be
        # on the disk first.
        self._wait_commits(file - self.scratch.files)
        staged = self.backend.stage_out(held.block)
        if staged is not None:
            staged()
        held.refs += 1
        future = self._helper.submit(self._write_block, file, slot, held)
        self._pending_write = (future, held)
        self.counters.add("io_wait_seconds", time.perf_counter() - started)

    def _write_block(self, file: int, slot: Slot, held: _CountedBlock) -> None:
        started = time.perf_counter()
        nbytes = self.scratch.write(file, slot, held.block.host)
        if self.writeback:
            self._committer.submit(self.scratch.start_writeback, file, slot)
        self.counters.add("scratch_written", nbytes)
        self.counters.add("write_seconds", time.perf_counter() - started)

    def _wait_write(self) -> None:
        """Wait for the write in flight, if any, and free its reference."""
        if self._pending_write is None:
            return
        (future, held), self._pending_write = self._pending_write, None
        try:
            future.result()
        finally:
            self.drop(held)

    def drop(self, held: _CountedBlock) -> None:
        """Release one reference to ``held``; the last one frees its buffer."""
        held.refs -= 1
        if held.refs == 0:
            self.pool.release(held.block.host)

    def _wait_commits(self, last: int) -> None:
        """Wait for the checkpoints of steps up to ``last`` and raise their errors."""
        for step in sorted(step for step in self._commits if step <= last):
            self._commits.pop(step).result()

    def end_step(self, k: int) -> None:
        """Record the checkpoint of step ``k``: on the background thread when it
        is flushed to the disk, at once otherwise (an atomic rename)."""
        started = time.perf_counter()
        self._wait_write()
        self.counters.add("io_wait_seconds", time.perf_counter() - started)
        if self.writeback:
            self._commits[k] = self._committer.submit(self._commit, k)
        else:
            self._commit(k)

    def finish(self) -> None:
        """Wait for the last checkpoint and for queued device work."""
        started = time.perf_counter()
        self._wait_write()
        self._wait_commits(self.grid.num_blocks)
        self.backend.synchronize()
        self.counters.add("io_wait_seconds", time.perf_counter() - started)

    def close(self) -> None:
        """Stop the helper threads, also after a failure."""
        if self._pending_write is not None:
            self._pending_write[0].exception()
            self._pending_write = None
        self.pool.close()
        self._helper.shutdown(wait=True, cancel_futures=True)
        self._committer.shutdown(wait=True, cancel_futures=True)


def _compute(pipeline: _Pipeline, function: Callable, *args: Any) -> Any:
    started = time.perf_counter()
    try:
        return function(*args)
    finally:
        pipeline.counters.add("compute_seconds", time.perf_counter() - started)


def _run_symmetric(pipeline: _Pipeline, kernel: Any, k: int) -> BlockLogdet:
    count = pipeline.grid.num_blocks
    diagonal = pipeline.take(k, (k, k))
    part = _compute(pipeline, kernel.factor, pipeline.data(diagonal))
    for i in range(k + 1, count):
        panel = pipeline.take(k, (i, k))
        left = _compute(pipeline, kernel.panel, pipeline.data(panel))
        if i < count - 1:
            pipeline.write(k + 1, (i, k), panel)
        for j in range(k + 1, i):
            other = pipeline.take(k + 1, (j, k))
            target = pipeline.take(k, (i, j))
            _compute(
                pipeline, kernel.update, pipeline.data(target), left,
                pipeline.data(other),
            )
            pipeline.drop(other)
            pipeline.write(k + 1, (i, j), target)
            pipeline.drop(target)
        target = pipeline.take(k, (i, i))
        _compute(
            pipeline, kernel.update_diagonal, pipeline.data(target), left,
            pipeline.data(panel),
        )
        pipeline.write(k + 1, (i, i), target)
        pipeline.drop(target)
        pipeline.drop(panel)
    pipeline.drop(diagonal)
    return part


def _run_symmetric_cached(pipeline: _Pipeline, kernel: Any, k: int) -> BlockLogdet:
    count = pipeline.grid.num_blocks
    diagonal = pipeline.take(k, (k, k))
    part = _compute(pipeline, kernel.factor, pipeline.data(diagonal))
    cached: list[_CountedBlock] = []
    try:
        for i in range(k + 1, count):
            panel = pipeline.take(k, (i, k))
            left = _compute(pipeline, kernel.panel, pipeline.data(panel))
            cached.append(panel)
            for j, other in zip(range(k + 1, i), cached, strict=False):
                target = pipeline.take(k, (i, j))
                _compute(
                    pipeline, kernel.update, pipeline.data(target), left,
                    pipeline.data(other),
                )
                pipeline.write(k + 1, (i, j), target)
                pipeline.drop(target)
            target = pipeline.take(k, (i, i))
            _compute(
                pipeline, kernel.update_diagonal, pipeline.data(target), left,
                pipeline.data(panel),
            )
            pipeline.write(k + 1, (i, i), target)
            pipeline.drop(target)
    finally:
        for held in cached:
            pipeline.drop(held)
        pipeline.drop(diagonal)
    return part


def _run_lu_cached(pipeline: _Pipeline, kernel: Any, k: int) -> BlockLogdet:
    count = pipeline.grid.num_blocks
    rest = range(k + 1, count)
    diagonal = pipeline.take(k, (k, k))
    part = _compute(pipeline, kernel.factor, pipeline.data(diagonal))
    rows: list[_CountedBlock] = []
    try:
        for j in rest:
            rows.append(pipeline.take(k, (k, j)))
            _compute(pipeline, kernel.row_panel, pipeline.data(rows[-1]))
        for i in rest:
            column = pipeline.take(k, (i, k))
            _compute(pipeline, kernel.column_panel, pipeline.data(column))
            for j, row in zip(rest, rows, strict=True):
                target = pipeline.take(k, (i, j))
                _compute(
                    pipeline, kernel.update, pipeline.data(target),
                    pipeline.data(column), pipeline.data(row),
                )
                pipeline.write(k + 1, (i, j), target)
                pipeline.drop(target)
            pipeline.drop(column)
    finally:
        for held in rows:
            pipeline.drop(held)
        pipeline.drop(diagonal)
    return part


def _run_lu(pipeline: _Pipeline, kernel: Any, k: int) -> BlockLogdet:
    count = pipeline.grid.num_blocks
    diagonal = pipeline.take(k, (k, k))
    part = _compute(pipeline, kernel.factor, pipeline.data(diagonal))
    for j in range(k + 1, count):
        row = pipeline.take(k, (k, j))
        _compute(pipeline, kernel.row_panel, pipeline.data(row))
        pipeline.write(k + 1, (k, j), row)
        pipeline.drop(row)
    for i in range(k + 1, count):
        column = pipeline.take(k, (i, k))
        _compute(pipeline, kernel.column_panel, pipeline.data(column))
        for j in range(k + 1, count):
            row = pipeline.take(k + 1, (k, j))
            target = pipeline.take(k, (i, j))
            _compute(
                pipeline, kernel.update, pipeline.data(target),
                pipeline.data(column), pipeline.data(row),
            )
            pipeline.drop(row)
            pipeline.write(k + 1, (i, j), target)
            pipeline.drop(target)
        pipeline.drop(column)
    pipeline.drop(diagonal)
    return part


def make_backend(device: str, method: str, max_size: int) -> tuple[Any, Any]:
    """Return ``(backend, kernel)`` for ``device``: ``"cpu"`` (scipy BLAS on the
    host), ``"cuda"`` (torch on the GPU) or ``"torch-cpu"`` (the torch code path
    on CPU tensors)."""
    if device == "cpu":
        from ._numpy import KERNELS, NumpyBackend

        return NumpyBackend(), KERNELS[method](max_size)
    from ._torch import KERNELS as TORCH_KERNELS
    from ._torch import TorchBackend

    backend = TorchBackend(device)
    return backend, TORCH_KERNELS[method](backend, max_size)


def factorize(
    source: MatrixInput,
    method: str,
    num_blocks: int,
    workdir: Path,
    device: str = "cpu",
    fsync: bool = True,
    keep_on_failure: bool = False,
    on_step: Callable[[int, int], None] | None = None,
    progress: bool | None = None,
    cache_panels: bool = True,
    io_threads: bool | None = None,
    direct_io: bool = True,
) -> EngineResult:
    """Return the log-determinant of ``source`` by an out-of-core block factorisation.

    Parameters
    ----------
    source
        Leading block of the input matrix.
    method
        ``"cholesky"`` (SPD), ``"ldl"`` (symmetric, Bunch-Kaufman pivoting
        inside diagonal blocks) or ``"lu"`` (partial pivoting inside diagonal
        blocks).
    num_blocks
        Block rows and columns n_b.
    workdir
        Folder of the step files and the checkpoint. A checkpoint of the same
        input and configuration found there is resumed. The folder is removed
        on success, and on failure unless ``keep_on_failure``.
    device
        ``"cpu"``, ``"cuda"`` or ``"torch-cpu"``; see :func:`make_backend`.
    fsync
        Flush each step file to the disk before its checkpoint is recorded,
        so the checkpoint survives a power loss and not only a killed process.
    keep_on_failure
        Keep ``workdir`` when the run fails with an error that is not a
        property of the matrix (an I/O error or an interrupt, for example), so
        a later call resumes it.
    on_step
        Called as ``on_step(k, num_blocks)`` after the checkpoint of step k is
        recorded.
    progress
        Show a progress bar (``None``: only on a terminal).
    cache_panels
        Keep each step's transformed panel blocks in memory instead of
        writing them to scratch and reading them back for every block row.
        This saves about a quarter of the I/O at n_b = 8 and holds up to
        n_b + 3 blocks (LU: n_b + 4) instead of six.
    io_threads
        Read and write on background threads while BLAS works (``True``), or
        in the compute thread between BLAS calls (``False``); see
        :class:`_InlinePipeline`. ``None`` picks background threads for the
        torch devices, whose copies to the GPU overlap with its work, and for
        direct I/O, whose transfers take little CPU time. Otherwise it picks
        the compute thread, because copies through the page cache then cost
        less on few cores.
    direct_io
        Move step files between the block buffers and the disk with
        ``O_DIRECT``, bypassing the page cache (:class:`ScratchFiles`). On
        the 2-core Xeon of the benchmark, with background I/O threads, this
        cut Cholesky of order 15,000 at n_b = 8 from 12.5 s to 9.5 s.

    Raises
    ------
    FactorizationError
        When a diagonal block has a pivot that is not positive (Cholesky) or
        is exactly zero (LDL, LU with n_b > 1).
    """
    _check_options(
        num_blocks, fsync=fsync, keep_on_failure=keep_on_failure,
        cache_panels=cache_panels, direct_io=direct_io, io_threads=io_threads,
    )
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {', '.join(METHODS)}")
    if device not in DEVICES:
        raise ValueError(
            f"device={device!r} is not one of {', '.join(DEVICES)}; 'cuda' uses "
            "torch's current CUDA device"
        )
    num_blocks = int(num_blocks)
    fsync, cache_panels, direct_io = bool(fsync), bool(cache_panels), bool(direct_io)
    grid = BlockGrid.split(source.order, num_blocks)
    workdir = Path(workdir)
    _check_workdir(workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        lock = _lock_folder(workdir)
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"the scratch folder {workdir} cannot be used: {exc.strerror}. Choose "
            "a writable folder (checkpoint_dir, or the run folder that --out names)",
            str(workdir),
        ) from exc
    try:
        scratch = ScratchFiles(
            workdir, grid, step_layouts(grid, method, cache_panels),
            files=3 if fsync else 2, direct=direct_io,
        )
    except BaseException:
        os.close(lock)
        raise
    identity = {
        "input": source.identity,
        "order": source.order,
        "method": method,
        "sizes": list(grid.sizes),
        "device": device,
        "cache_panels": cache_panels,
        # The step files rotate over 3 files with fsync and 2 without.
        "fsync": fsync,
        # Direct I/O aligns every block in the step files.
        "direct_io": scratch.direct,
    }
    threads = device != "cpu" or scratch.direct
    if io_threads is not None:
        threads = bool(io_threads)
    succeeded = False
    matrix_error = False
    try:
        start, parts = _resume_point(workdir, identity, scratch)
        result = _factor_steps(
            source, method, grid, scratch, device, start, parts, identity, fsync,
            on_step, progress, cache_panels,
            threads,
        )
        succeeded = True
        return result
    except (FactorizationError, SolverError):
        matrix_error = True
        raise
    finally:
        scratch.close()
        # A folder without a checkpoint cannot be resumed. Keeping it would only
        # occupy disk space, which may be what the run ran out of.
        resumable = (workdir / STATE_NAME).exists()
        if succeeded or matrix_error or not keep_on_failure or not resumable:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            logger.info("kept the checkpoint in %s for a later run to resume", workdir)
        os.close(lock)


#: Files the engine creates in its folder; anything else there is the user's.
_ENGINE_FILE = re.compile(
    r"(lock|state\.json(\.partial)?|trailing-\d+\.bin|direct-io-probe)"
)


def _check_workdir(workdir: Path) -> None:
    """Raise ValueError when ``workdir`` contains files the engine did not make,
    because the engine removes the whole folder when it finishes."""
    if not workdir.is_dir():
        return
    foreign = sorted(p.name for p in workdir.iterdir() if not _ENGINE_FILE.fullmatch(p.name))
    if foreign:
        raise ValueError(
            f"workdir {workdir} contains {foreign[0]!r}, which the engine did not "
            "create, and the engine removes the whole folder when it finishes; give "
            "a new or empty folder"
        )


def _check_options(num_blocks: Any, **flags: Any) -> None:
    """Raise TypeError unless ``num_blocks`` is an integer and every flag a
    bool (``io_threads`` may also be ``None``)."""
    if not isinstance(num_blocks, numbers.Integral) or isinstance(
        num_blocks, (bool, np.bool_)
    ):
        raise TypeError(
            f"num_blocks={num_blocks!r} is not an int; give the number of block "
            "rows, such as num_blocks=8"
        )
    for name, value in flags.items():
        if value is None and name == "io_threads":
            continue
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(
                f"{name}={value!r} is not a bool; pass True or False"
                + (" (or None to choose)" if name == "io_threads" else "")
            )


class FolderBusy(RuntimeError):
    """Another process is factoring in the same checkpoint folder."""


def _lock_folder(workdir: Path) -> int:
    """Lock ``workdir`` for this process and return the lock's descriptor.

    Raises
    ------
    FolderBusy
        When another process holds the lock.
    """
    fd = os.open(workdir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderBusy(
            f"another process is factoring in {workdir}; wait for it to finish, "
            "or give this run another checkpoint folder (checkpoint_dir)"
        ) from None
    return fd


def _resume_point(
    workdir: Path, identity: dict[str, Any], scratch: ScratchFiles
) -> tuple[int, list[BlockLogdet]]:
    """Return the first step to run and the log-dets of the finished ones."""
    state = load_state(workdir, identity, scratch.grid.num_blocks)
    if state is None:
        return 0, []
    start, parts = state
    path = scratch.path(start)
    if start > 0 and (not path.exists() or path.stat().st_size < scratch.size(start)):
        logger.warning(
            "ignoring the checkpoint in %s: %s is missing or incomplete", workdir, path
        )
        return 0, []
    logger.info("resuming the factorisation at step %d from %s", start, workdir)
    return start, parts


def _factor_steps(
    source: MatrixInput,
    method: str,
    grid: BlockGrid,
    scratch: ScratchFiles,
    device: str,
    start: int,
    parts: list[BlockLogdet],
    identity: dict[str, Any],
    fsync: bool,
    on_step: Callable[[int, int], None] | None,
    progress: bool | None,
    cache_panels: bool,
    io_threads: bool,
) -> EngineResult:
    from tqdm import tqdm

    count = grid.num_blocks
    backend, kernel = make_backend(device, method, grid.max_size)
    if method in SYMMETRIC_METHODS:
        run = _run_symmetric_cached if cache_panels else _run_symmetric
    else:
        run = _run_lu_cached if cache_panels else _run_lu

    def commit(k: int) -> None:
        if fsync:
            scratch.sync(k + 1)
        save_state(scratch.folder, identity, k + 1, parts[: k + 1], durable=fsync)

    started = time.perf_counter()
    kind = _Pipeline if io_threads else _InlinePipeline
    pipeline = kind(grid, method, source, scratch, backend, start, commit, cache_panels)
    pipeline.writeback = fsync
    total = sum(step_flops(grid, method, k) for k in range(count)) / 1e9
    bar = tqdm(
        total=total, initial=sum(step_flops(grid, method, k) for k in range(start)) / 1e9,
        unit="GFLOP", desc=f"ooc {method}", disable=None if progress is None else not progress,
    )
    try:
        for k in range(start, count):
            try:
                part = run(pipeline, kernel, k)
            except NotPositiveDefinite as exc:
                raise FactorizationError(_not_positive_message(grid, k, exc)) from exc
            except ZeroPivot as exc:
                if count == 1:
                    return EngineResult(float("-inf"), 0.0, {"singular": True})
                raise FactorizationError(_zero_pivot_message(grid, method, k, exc)) from exc
            parts.append(part)
            if k < count - 1:
                pipeline.end_step(k)
                if on_step is not None:
                    pipeline.finish()
                    on_step(k, count)
            bar.update(step_flops(grid, method, k) / 1e9)
        pipeline.finish()
    finally:
        bar.close()
        pipeline.close()
    wall = time.perf_counter() - started

    logabsdet, sign, counts = combine(parts)
    details = _details(
        grid, method, device, pipeline, start, wall, counts, cache_panels
    )
    details["io_threads"] = io_threads
    details["direct_io"] = scratch.direct
    return EngineResult(logabsdet, sign, details)


def _details(
    grid: BlockGrid,
    method: str,
    device: str,
    pipeline: _Pipeline,
    start: int,
    wall: float,
    counts: dict[str, int],
    cache_panels: bool,
) -> dict[str, Any]:
    counters = pipeline.counters
    flops = grid.order**3 / 3.0 * (2.0 if method == "lu" else 1.0)
    expected = io_volume(grid, method, cache_panels)
    return {
        "method": method,
        "device": device,
        "num_blocks": grid.num_blocks,
        "block_size": grid.max_size,
        "max_lapack_order": grid.max_size,
        "bytes_read": counters.source_read + counters.scratch_read,
        "bytes_read_input": counters.source_read,
        "bytes_read_scratch": counters.scratch_read,
        "bytes_written": counters.scratch_written,
        "bytes_expected": {
            "input_read": expected.source_read,
            "scratch_read": expected.scratch_read,
            "scratch_written": expected.scratch_written,
        },
        "cache_panels": cache_panels,
        "block_memory_bytes": memory_bytes(
            grid, method, cache_panels, isinstance(pipeline, _Pipeline)
        ),
        "io_wait_seconds": counters.io_wait_seconds,
        "read_seconds": counters.read_seconds,
        "write_seconds": counters.write_seconds,
        "compute_seconds": counters.compute_seconds,
        "wall_seconds": wall,
        "gflops_effective": flops / wall / 1e9 if wall > 0 else 0.0,
        "resumed_from_step": start,
        **counts,
    }


def _not_positive_message(grid: BlockGrid, k: int, exc: NotPositiveDefinite) -> str:
    row = grid.offset(k) + exc.index
    return (
        f"Cholesky failed at row {row} (pivot {exc.index} of diagonal block {k}): "
        "the Schur complement there is not positive definite, so the matrix is "
        "indefinite or singular. Use method 'ldl' or 'lu', or add a positive "
        "shift to the diagonal."
    )


def _zero_pivot_message(grid: BlockGrid, method: str, k: int, exc: ZeroPivot) -> str:
    row = grid.offset(k) + exc.index
    return (
        f"{method.upper()} met an exactly zero pivot at row {row} (pivot "
        f"{exc.index} of diagonal block {k}). Pivoting stays inside diagonal "
        "blocks, so the matrix is singular or needs a row interchange across "
        "blocks; a run with num_blocks=1 tells which."
    )
