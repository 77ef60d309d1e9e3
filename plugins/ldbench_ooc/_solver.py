"""The ``ooc`` solver: out-of-core block factorisation with overlapped I/O."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import ClassVar

from ldbench import (
    Estimate,
    MatrixHandle,
    MatrixInfo,
    Param,
    ParameterError,
    SolveContext,
    Solver,
    SolverError,
    Structure,
    factorization_flops,
)

from ._engine import FactorizationError, factorize
from ._grid import choose_num_blocks
from ._io import MatrixInput

logger = logging.getLogger(__name__)

_REQUIRED_STRUCTURE = {
    "cholesky": Structure.SPD,
    "ldl": Structure.SYMMETRIC,
    "lu": Structure.GENERAL,
}
_LABELS = {"cholesky": "Cholesky", "ldl": "LDL", "lu": "LU"}


class OocSolver(Solver):
    """Exact log-determinant by a right-looking block factorisation out of core.

    The matrix is split into n_b x n_b blocks. Each step factors one diagonal
    block (pivoting only inside it) and updates the trailing blocks, which are
    kept in scratch files on disk. Blocks move by O_DIRECT on a reader and a
    writer thread while BLAS works (or, through the page cache, between BLAS
    calls), so a large matrix runs at close to the speed of the BLAS. After every step a checkpoint is recorded, and a
    run killed part-way resumes from the last finished step.

    ``logabsdet`` is the natural log of ``|det A|``. FLOPs, with a multiply-add
    counted as two, are m^3/3 for Cholesky and LDL and 2 m^3/3 for LU.
    """

    name: ClassVar[str] = "ooc"
    version: ClassVar[str] = "1"
    parameters: ClassVar[dict[str, Param]] = {
        "method": Param(
            "lu",
            str,
            help="Block factorisation: 'cholesky' (SPD), 'ldl' (symmetric, "
            "Bunch-Kaufman pivoting inside diagonal blocks) or 'lu' (general, "
            "partial pivoting inside diagonal blocks).",
            choices=("cholesky", "ldl", "lu"),
        ),
        "num_blocks": Param(
            0,
            int,
            help="Blocks per row and column (n_b); 0 derives it from memory_mb "
            "and max_block_order.",
            minimum=0,
        ),
        "memory_mb": Param(
            2048.0,
            float,
            help="Memory for block buffers and kernel temporaries, in MiB; sets "
            "n_b when num_blocks is 0.",
            minimum=1.0,
        ),
        "max_block_order": Param(
            8192,
            int,
            help="Largest order of a block, so that every LAPACK call works on a "
            "matrix of at most this order.",
            minimum=1,
        ),
        "device": Param(
            "cpu",
            str,
            help="Where blocks are computed: 'cpu' (scipy BLAS), 'cuda' (torch on "
            "the GPU, host memory pinned) or 'torch-cpu' (the torch code path on "
            "CPU tensors).",
            choices=("cpu", "cuda", "torch-cpu"),
        ),
        "checkpoint_dir": Param(
            "",
            str,
            help="Folder for the step files and checkpoints, kept when a run "
            "fails after its first checkpoint (and not because of the matrix) so "
            "the next run of the same case resumes; '' keeps them in the case's "
            "scratch folder, which the runner removes after the case.",
        ),
        "fsync": Param(
            True,
            bool,
            help="Flush each step file to disk before its checkpoint, so it "
            "survives a power loss and not only a killed process; takes three "
            "step files instead of two.",
        ),
        "cache_panels": Param(
            True,
            bool,
            help="Keep each step's panel blocks in memory (up to n_b + 3 blocks, "
            "LU n_b + 4) instead of re-reading them from scratch for every "
            "block row (6 blocks); false moves about a third more bytes.",
        ),
        "io": Param(
            "auto",
            str,
            help="Where blocks are read and written: 'threads' (background "
            "threads overlapping BLAS, two more block buffers; the faster choice "
            "with O_DIRECT), 'inline' (in the compute thread between BLAS calls, "
            "one more buffer; the faster choice through the page cache on few "
            "cores) or 'auto' (threads when the step files take O_DIRECT or on "
            "the torch devices, inline otherwise).",
            choices=("auto", "inline", "threads"),
        ),
        "direct_io": Param(
            True,
            bool,
            help="Read and write the step files with O_DIRECT, by DMA between "
            "the block buffers and the disk, bypassing the page cache; falls "
            "back to the page cache where the file system rejects it.",
        ),
    }
    structures: ClassVar[frozenset[Structure]] = frozenset(Structure)
    requires: ClassVar[tuple[str, ...]] = ("scipy",)
    stochastic: ClassVar[bool] = False
    device: ClassVar[str] = "cpu"

    def validate(self) -> None:
        """Reject a memory budget that is not finite, and mark CUDA
        configurations as GPU work, for pricing and reports."""
        budget = self.params["memory_mb"]
        if not math.isfinite(budget):
            raise ParameterError(
                f"solver 'ooc': memory_mb={budget} is not a finite number of MiB; "
                "give the memory for block buffers, such as memory_mb = 2048"
            )
        if self.params["device"] == "cuda":
            # The instance attribute shadows the class default of "cpu".
            self.device = "gpu"

    def required_structure(self) -> Structure:
        """Return SPD for Cholesky, symmetric for LDL and general for LU."""
        return _REQUIRED_STRUCTURE[self.params["method"]]

    def label(self) -> str:
        """Return the method and block settings, such as ``"Cholesky, n_b=8"``."""
        parts = [_LABELS[self.params["method"]]]
        if self.params["num_blocks"]:
            parts.append(f"n_b={self.params['num_blocks']}")
        else:
            parts.append(f"{self.params['memory_mb']:g} MiB")
        if self.params["device"] != "cpu":
            parts.append(self.params["device"])
        if not self.params["direct_io"]:
            parts.append("page cache")
        if self.params["io"] != "auto":
            parts.append(f"io={self.params['io']}")
        return ", ".join(parts)

    def flops(self, info: MatrixInfo) -> float:
        """Return m^3/3 (Cholesky, LDL) or 2 m^3/3 (LU) for ``m = info.order``."""
        return self._flop_count(info.order)

    def _flop_count(self, order: int) -> float:
        return factorization_flops(self.params["method"], order)

    def num_blocks(self, order: int) -> int:
        """Return n_b for a matrix of ``order``.

        Raises
        ------
        ParameterError
            When ``num_blocks`` exceeds the order or makes blocks larger than
            ``max_block_order``, or when ``memory_mb`` cannot hold the blocks.
        """
        method = self.params["method"]
        limit = self.params["max_block_order"]
        count = self.params["num_blocks"]
        if count == 0:
            budget = int(self.params["memory_mb"] * 2**20)
            try:
                return choose_num_blocks(
                    order, method, budget, limit, self.params["cache_panels"],
                    # The budget assumes the larger pool of the two modes.
                    self._io_threads() is not False,
                )
            except ValueError as exc:
                raise ParameterError(f"solver 'ooc': {exc}; raise memory_mb") from exc
        if count > order:
            raise ParameterError(
                f"solver 'ooc': num_blocks={count} exceeds the matrix order {order}; "
                f"use num_blocks <= {order}"
            )
        largest = -(-order // count)
        if largest > limit:
            raise ParameterError(
                f"solver 'ooc': num_blocks={count} gives blocks of order {largest} "
                f"for a matrix of order {order}, above max_block_order={limit}. "
                f"Use num_blocks >= {-(-order // limit)}."
            )
        return count

    def _io_threads(self) -> bool | None:
        """Return whether blocks move on background threads, or ``None`` for
        the engine's choice, which depends on whether the scratch folder takes
        O_DIRECT."""
        mode = self.params["io"]
        if mode == "auto":
            return None
        return mode == "threads"

    def solve(self, matrix: MatrixHandle, context: SolveContext) -> Estimate:
        """Factor the readable block of ``matrix`` out of core.

        Raises
        ------
        ParameterError
            When the block grid does not fit ``max_block_order`` or ``memory_mb``.
        SolverError
            When an entry is NaN or infinite, when Cholesky meets a pivot that
            is not positive, or when LU or LDL with n_b > 1 meets an exactly
            zero pivot inside a diagonal block.
        """
        method = self.params["method"]
        order = matrix.order
        count = self.num_blocks(order)
        stat = matrix.path.stat()
        identity = (
            f"{matrix.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{order}"
        )
        source = MatrixInput(matrix.dataset(), order, identity)
        # Every setting in the checkpoint's identity is in the key, so runs that
        # differ in one use different folders.
        key_text = json.dumps(
            [identity, method, count, self.params["device"], self.params["cache_panels"],
             self.params["fsync"], self.params["direct_io"]]
        )
        key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
        checkpoint_dir = self.params["checkpoint_dir"].strip()
        base = Path(checkpoint_dir).expanduser() if checkpoint_dir else context.scratch_dir
        workdir = base / f"ooc-{key}"
        logger.debug("ooc %s: order %d, n_b=%d, folder %s", method, order, count, workdir)
        try:
            result = factorize(
                source,
                method,
                count,
                workdir,
                device=self.params["device"],
                fsync=self.params["fsync"],
                keep_on_failure=bool(checkpoint_dir),
                cache_panels=self.params["cache_panels"],
                io_threads=self._io_threads(),
                direct_io=self.params["direct_io"],
            )
        except FactorizationError as exc:
            raise SolverError(str(exc)) from exc
        finally:
            source.close()
        details = dict(result.details)
        details["workdir"] = str(workdir)
        return Estimate(
            logabsdet=result.logabsdet,
            sign=result.sign,
            flops=self._flop_count(order),
            read_order=order,
            details=details,
        )
