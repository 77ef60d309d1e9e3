"""The ``memdet`` solver: block LU, LDL or Cholesky with blocks kept on disk."""

from __future__ import annotations

import contextlib
import io
import logging
import math
from typing import ClassVar

import numpy as np

from ldbench import (
    Estimate,
    MatrixHandle,
    MatrixInfo,
    Param,
    SolveContext,
    Solver,
    SolverError,
    Structure,
    factorization_flops,
)

from ._array import LeadingBlockArray
from ._detkit import (
    check_num_blocks,
    detkit_num_blocks,
    import_memdet,
    log_output,
    parse_memory,
)
from ._results import failure_error, is_exactly_singular, memdet_details, nan_error

logger = logging.getLogger(__name__)

_ASSUME = {"lu": "gen", "ldl": "sym", "cholesky": "spd"}
_REQUIRED_STRUCTURE = {
    "lu": Structure.GENERAL,
    "ldl": Structure.SYMMETRIC,
    "cholesky": Structure.SPD,
}
_LABELS = {"lu": "LU", "ldl": "LDL", "cholesky": "Cholesky"}


class MemdetSolver(Solver):
    """Exact log-determinant with ``detkit.memdet`` under a memory limit.

    memdet factors the matrix over an n_b x n_b grid of blocks, keeps at most
    four blocks in memory and stores the others in a scratch folder on disk
    when n_b > 2. It pivots only inside diagonal blocks. The matrix is read
    block by block from the HDF5 store through the handle, never whole.
    ``logabsdet`` is the natural log of ``|det A|``. Computation is in float64.

    FLOPs, with a multiply-add counted as two, do not depend on n_b: m^3/3 for
    Cholesky and LDL, 2 m^3/3 for LU.
    """

    name: ClassVar[str] = "memdet"
    version: ClassVar[str] = "1"
    parameters: ClassVar[dict[str, Param]] = {
        "method": Param(
            "lu",
            str,
            help="Block factorisation: 'lu' (general), 'ldl' (symmetric) or "
            "'cholesky' (SPD).",
            choices=("lu", "ldl", "cholesky"),
        ),
        "num_blocks": Param(
            4,
            int,
            help="Blocks per row and column (n_b). Scratch files on disk are "
            "used when n_b > 2. Ignored when max_mem is set.",
            minimum=1,
        ),
        "max_mem": Param(
            "",
            str,
            help="Memory limit for the blocks, such as '512MB' (binary units, "
            "1 KB = 1024 B). When set, detkit derives n_b from it. '' for none.",
        ),
        "parallel_io": Param(
            None,
            str,
            help="Parallel block reads and writes: 'multiproc' or 'dask'. "
            "Leave unset for serial I/O.",
            choices=("multiproc", "dask"),
        ),
    }
    structures: ClassVar[frozenset[Structure]] = frozenset(Structure)
    requires: ClassVar[tuple[str, ...]] = ("detkit",)
    stochastic: ClassVar[bool] = False
    device: ClassVar[str] = "cpu"

    def validate(self) -> None:
        """Check that ``max_mem`` is a memory size such as ``'512MB'``."""
        self._max_mem_bytes = parse_memory(self.params["max_mem"])

    def required_structure(self) -> Structure:
        """Return general for LU, symmetric for LDL and SPD for Cholesky."""
        return _REQUIRED_STRUCTURE[self.params["method"]]

    def label(self) -> str:
        """Return the method and block settings, such as ``"LDL, n_b=4"``."""
        parts = [_LABELS[self.params["method"]]]
        if self._max_mem_bytes is None:
            parts.append(f"n_b={self.params['num_blocks']}")
        else:
            parts.append(f"max_mem={self.params['max_mem'].strip()}")
        if self.params["parallel_io"] is not None:
            parts.append(f"io={self.params['parallel_io']}")
        return ", ".join(parts)

    def flops(self, info: MatrixInfo) -> float:
        """Return m^3/3 (Cholesky, LDL) or 2 m^3/3 (LU) for ``m = info.order``."""
        return self._flop_count(info.order)

    def _flop_count(self, order: int) -> float:
        return factorization_flops(self.params["method"], order)

    def prepare(self) -> None:
        """Import detkit outside the timed solve, keeping signal handlers."""
        import_memdet()

    def solve(self, matrix: MatrixHandle, context: SolveContext) -> Estimate:
        """Run memdet on the readable block of ``matrix``.

        Raises
        ------
        ParameterError
            When the block grid has more block rows than the order allows.
        SolverError
            When a NaN or infinite entry is read, or when memdet fails: a pivot
            that is not positive in Cholesky, a zero pivot inside a diagonal
            block, or not enough memory or scratch disk space.
        """
        method = self.params["method"]
        order = matrix.order
        check_num_blocks(order, self.params["num_blocks"], self._max_mem_bytes)
        num_blocks = detkit_num_blocks(
            order, self.params["num_blocks"], self._max_mem_bytes
        )
        memdet = import_memdet()
        context.scratch_dir.mkdir(parents=True, exist_ok=True)
        logger.debug("memdet %s: order %d, n_b=%d", method, order, num_blocks)

        # NOTE: memdet's check=True is not used because detkit 0.12.3 also scans
        # the unused, uninitialised tail of the buffer that holds a smaller last
        # block, so it rejects valid matrices at random. LeadingBlockArray checks
        # every entry it reads instead.
        # memdet prints "failed" to stdout when it raises, even when not
        # verbose, so its output goes to the log instead. Its floating-point
        # warnings are silenced because a NaN or -inf result is checked below.
        max_mem = math.inf if self._max_mem_bytes is None else self._max_mem_bytes
        output = io.StringIO()
        try:
            with contextlib.redirect_stdout(output), np.errstate(all="ignore"):
                logabsdet, sign, _, _, info = memdet(
                    LeadingBlockArray(matrix),
                    max_mem=max_mem,
                    num_blocks=self.params["num_blocks"],
                    assume=_ASSUME[method],
                    mixed_precision="float64",
                    parallel_io=self.params["parallel_io"],
                    scratch_dir=str(context.scratch_dir),
                    return_info=True,
                )
        except SolverError:
            raise
        except (ValueError, RuntimeError, OSError) as exc:
            if not is_exactly_singular(exc, method, num_blocks):
                raise failure_error(exc, method, order, num_blocks) from exc
            logger.debug("memdet %s: exactly singular (%s)", method, exc)
            return Estimate(
                logabsdet=-math.inf,
                sign=0.0,
                flops=self._flop_count(order),
                read_order=order,
                details={"method": method, "num_blocks": num_blocks, "singular": True},
            )
        finally:
            log_output(output.getvalue())

        logabsdet = float(logabsdet)
        sign = float(sign)
        if math.isnan(logabsdet):
            raise nan_error(method)
        if logabsdet == -math.inf:
            sign = 0.0
        details = memdet_details(
            method, info, self._max_mem_bytes, self.params["parallel_io"]
        )
        logger.debug("memdet %s: logabsdet=%r sign=%r", method, logabsdet, sign)
        return Estimate(
            logabsdet=logabsdet,
            sign=sign,
            flops=self._flop_count(order),
            read_order=order,
            details=details,
        )
