"""Block grid of the out-of-core factorisation and its analytic I/O volume.

The matrix of order m is split into n_b block rows and columns whose orders
differ by at most one (the first ``m mod n_b`` blocks are one row larger).
Blocks are addressed as (i, j) = (block row, block column).
"""

from __future__ import annotations

from dataclasses import dataclass

ITEMSIZE = 8  # bytes of a float64 entry

#: Alignment of direct I/O, in bytes: of buffer addresses, file offsets and
#: transfer lengths. 4 KiB is a multiple of the 512-byte and 4 KiB logical
#: sectors of common disks.
ALIGN = 4096

#: Methods whose trailing matrix is symmetric, so only blocks i >= j are kept.
SYMMETRIC_METHODS = ("cholesky", "ldl")
METHODS = ("cholesky", "ldl", "lu")


@dataclass(frozen=True)
class BlockGrid:
    """Orders and offsets of the n_b x n_b block grid of a matrix.

    Attributes
    ----------
    order
        Matrix order m.
    sizes
        Order of each block row, ``len(sizes) == n_b``, summing to m.
    """

    order: int
    sizes: tuple[int, ...]

    @classmethod
    def split(cls, order: int, num_blocks: int) -> BlockGrid:
        """Split ``order`` into ``num_blocks`` blocks whose orders differ by <= 1."""
        if not 1 <= num_blocks <= order:
            raise ValueError(
                f"num_blocks={num_blocks} must be between 1 and the order {order}"
            )
        base, extra = divmod(order, num_blocks)
        sizes = tuple(base + 1 if index < extra else base for index in range(num_blocks))
        return cls(order, sizes)

    @property
    def num_blocks(self) -> int:
        """Number of block rows n_b."""
        return len(self.sizes)

    @property
    def max_size(self) -> int:
        """Order of the largest block."""
        return max(self.sizes)

    def offset(self, index: int) -> int:
        """Return the first row of block row ``index``."""
        return sum(self.sizes[:index])

    def nbytes(self, i: int, j: int) -> int:
        """Return the bytes of block (i, j) in float64."""
        return ITEMSIZE * self.sizes[i] * self.sizes[j]


@dataclass(frozen=True)
class IOVolume:
    """Bytes moved by one complete factorisation.

    Attributes
    ----------
    source_read
        Bytes read from the input matrix (each needed block once).
    scratch_read
        Bytes read back from the scratch files.
    scratch_written
        Bytes written to the scratch files.
    """

    source_read: int
    scratch_read: int
    scratch_written: int


def io_volume(grid: BlockGrid, method: str, cache_panels: bool = False) -> IOVolume:
    """Return the bytes that a run without resumption reads and writes.

    Step k of the symmetric methods (Cholesky, LDL) reads the diagonal block,
    the panel blocks (i, k) for i > k and the trailing blocks (i, j) for
    i >= j > k, and writes every updated trailing block. Without the panel
    cache it also writes the panel block (i, k) for k < i < n_b - 1 and
    reads each transformed panel block (j, k) once more for every block row
    i > j. LU reads and writes the full trailing square; without the panel
    cache it also writes the row panel (k, j) for j > k and reads it back
    once per block row i > k. Step 0 reads from the input, the other steps
    from scratch.
    """
    count = grid.num_blocks
    nbytes = grid.nbytes
    source = scratch_read = written = 0
    for k in range(count):
        rest = range(k + 1, count)
        if method in SYMMETRIC_METHODS:
            trailing = [(i, j) for i in range(k, count) for j in range(k, i + 1)]
            writes = [(i, j) for i in rest for j in range(k + 1, i + 1)]
            rereads = [(j, k) for i in rest for j in range(k + 1, i)]
            panels = [(i, k) for i in range(k + 1, count - 1)]
        else:
            trailing = [(i, j) for i in range(k, count) for j in range(k, count)]
            writes = [(i, j) for i in rest for j in rest]
            rereads = [(k, j) for _ in rest for j in rest]
            panels = [(k, j) for j in rest]
        if cache_panels:
            rereads, panels = [], []
        trailing_bytes = sum(nbytes(i, j) for i, j in trailing)
        if k == 0:
            source += trailing_bytes
        else:
            scratch_read += trailing_bytes
        scratch_read += sum(nbytes(i, j) for i, j in rereads)
        written += sum(nbytes(i, j) for i, j in writes + panels)
    return IOVolume(source, scratch_read, written)


def pool_blocks(
    method: str, num_blocks: int = 1, cache_panels: bool = False, io_threads: bool = True
) -> int:
    """Return how many block buffers the pipeline allocates.

    Without the panel cache, the compute loop holds at most four blocks at
    once (the factored diagonal block, the current panel block, a re-read
    panel block and the block being updated). With it, the loop keeps the
    step's transformed panel blocks instead of re-reading them: at most
    n_b - 1 of them besides the diagonal block, the current column panel (LU)
    and the block being updated. With ``io_threads``, two more buffers let the
    next block be read and the previous one be written while BLAS works on
    the current ones. Without, one more buffer holds the block being written
    while the compute thread reads the next one.
    """
    if not cache_panels:
        in_use = 4
    elif method in SYMMETRIC_METHODS:
        in_use = num_blocks + 1
    else:
        in_use = num_blocks + 2
    return in_use + 2 if io_threads else in_use + 1


def workspace_blocks(method: str) -> int:
    """Return the block-sized temporaries the kernels allocate besides the pool.

    Cholesky needs none. LDL keeps ``W D^-1`` of the current panel block and
    scipy's ``ldl`` returns two full blocks (factor and D). LU permutes panel
    rows through one temporary block.
    """
    return {"cholesky": 0, "ldl": 3, "lu": 1}[method]


def round_up(nbytes: int) -> int:
    """Return ``nbytes`` rounded up to a multiple of :data:`ALIGN`."""
    return -(-nbytes // ALIGN) * ALIGN


def buffer_bytes(block_order: int) -> int:
    """Return the bytes allocated for one pool buffer of blocks up to
    ``block_order``: the block rounded up to :data:`ALIGN`, plus ``ALIGN``
    of slack to align its start (see ``aligned_buffer``)."""
    return round_up(ITEMSIZE * block_order**2) + ALIGN


def _block_memory(method: str, count: int, largest: int, cache_panels: bool,
                  io_threads: bool) -> int:
    pool = pool_blocks(method, count, cache_panels, io_threads)
    workspace = workspace_blocks(method)
    return pool * buffer_bytes(largest) + workspace * ITEMSIZE * largest**2


def memory_bytes(
    grid: BlockGrid, method: str, cache_panels: bool = False, io_threads: bool = True
) -> int:
    """Return the memory that block buffers and kernel temporaries take, in bytes."""
    return _block_memory(method, grid.num_blocks, grid.max_size, cache_panels,
                         io_threads)


def choose_num_blocks(
    order: int,
    method: str,
    budget_bytes: int,
    max_block_order: int,
    cache_panels: bool = False,
    io_threads: bool = True,
) -> int:
    """Return the smallest n_b whose blocks fit ``budget_bytes`` and whose
    largest block has order at most ``max_block_order``.

    Raises
    ------
    ValueError
        When no block count up to the order fits the budget.
    """
    first = max(1, -(-order // max(max_block_order, 1)))
    for count in range(first, order + 1):
        largest = -(-order // count)
        if _block_memory(method, count, largest, cache_panels, io_threads) <= budget_bytes:
            return count
    blocks = pool_blocks(method, order, cache_panels, io_threads)
    blocks += workspace_blocks(method)
    needed = _block_memory(method, order, 1, cache_panels, io_threads)
    raise ValueError(
        f"a memory budget of {budget_bytes} bytes cannot hold {blocks} blocks "
        f"of order 1, which take {needed} bytes with their 4 KiB alignment"
    )
