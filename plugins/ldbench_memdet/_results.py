"""memdet's return values and exceptions turned into ldbench details and errors."""

from __future__ import annotations

import logging
from typing import Any

from ldbench import SolverError

from ._detkit import block_order, pivot_failure_index

logger = logging.getLogger(__name__)

_NAMES = {"lu": "LU", "ldl": "LDL", "cholesky": "Cholesky"}


def is_exactly_singular(exc: BaseException, method: str, num_blocks: int) -> bool:
    """Return True when ``exc`` proves the matrix exactly singular.

    With one block, memdet runs LAPACK's LU (partial pivoting) or LDL
    (Bunch-Kaufman) on the whole matrix, and ``info > 0`` means an exactly zero
    pivot of U or D. With more blocks, pivoting stops at block edges, so a zero
    pivot does not prove singularity, and Cholesky fails on indefinite
    matrices as well.
    """
    return (
        method in ("lu", "ldl")
        and num_blocks == 1
        and pivot_failure_index(exc) is not None
    )


def failure_error(
    exc: BaseException, method: str, order: int, num_blocks: int
) -> SolverError:
    """Build a SolverError that explains why memdet raised ``exc`` and what to try."""
    name = _NAMES[method]
    info = pivot_failure_index(exc)
    block = block_order(order, num_blocks)
    message = str(exc)

    if info is not None and method == "cholesky":
        if num_blocks == 1:
            where = f"the leading {info}x{info} block is not positive definite"
        else:
            where = (
                f"a diagonal block of order {block}, after the updates from the "
                "blocks before it, is not positive definite"
            )
        return SolverError(
            f"memdet Cholesky failed at pivot index {info - 1} (0-based within the "
            f"diagonal block): {where}, so the matrix is indefinite or singular. "
            "Use method 'ldl' or 'lu', or add a positive shift to the diagonal."
        )
    if info is not None:
        return SolverError(
            f"memdet {name} with n_b={num_blocks} met an exactly zero pivot at "
            f"index {info - 1} (0-based) within a diagonal block of order {block}. "
            "memdet pivots only inside diagonal blocks, so the matrix is singular "
            "or needs a row interchange across blocks. A run with num_blocks=1 "
            "tells which, and another num_blocks may avoid the zero pivot."
        )
    hint = "."
    if "memory" in message:
        hint = ". Raise num_blocks or set a smaller max_mem."
    elif "disk space" in message:
        hint = ". Free space in the scratch folder or move it to a larger disk."
    return SolverError(
        f"memdet {name} with n_b={num_blocks} failed: "
        f"{type(exc).__name__}: {message.rstrip('.')}{hint}"
    )


def nan_error(method: str) -> SolverError:
    """Return the SolverError for a NaN log-determinant from memdet."""
    if method == "ldl":
        # NOTE: detkit 0.12.3 turns each 2x2 block [[a, b], [b, c]] of D into
        # the diagonal pair (a, (ac - b^2) / a), which is (0, inf) when a == 0,
        # so log|0| + log|inf| is NaN. Bunch-Kaufman picks such blocks when a
        # diagonal entry is zero, as in [[0, 1], [1, 0]].
        return SolverError(
            "memdet LDL returned NaN: detkit folds each 2x2 block of D into a "
            "diagonal pair by dividing by the block's first entry, which is zero "
            "for this matrix. Use method 'lu' (or the dense solver) instead."
        )
    return SolverError(
        f"memdet {_NAMES[method]} returned NaN for the log-determinant. Check the "
        "matrix for entries so large that the factorisation overflows"
    )


def memdet_details(
    method: str, info: dict[str, Any], max_mem: int | None, parallel_io: str | None
) -> dict[str, Any]:
    """Return the block and I/O figures of memdet's ``info`` as JSON values.

    Times are in seconds and sizes in bytes. Loads and stores count blocks
    moved between memory and the input or the scratch folder.
    """
    block = info["block"]
    scratch = info["scratch"]
    process = info["process"]
    return {
        "method": method,
        "assume": info["matrix"]["assume"],
        "num_blocks": int(block["matrix_blocks"][0]),
        "block_shape": [int(size) for size in block["block_shape"]],
        "block_nbytes": int(block["block_nbytes"]),
        "num_block_loads": int(scratch["num_block_loads"]),
        "num_block_stores": int(scratch["num_block_stores"]),
        "num_scratch_blocks": int(scratch["num_scratch_blocks"]),
        "scratch_nbytes": int(scratch["scratch_nbytes"]),
        "load_wall_time": float(process["load_wall_time"]),
        "store_wall_time": float(process["store_wall_time"]),
        "load_proc_time": float(process["load_proc_time"]),
        "store_proc_time": float(process["store_proc_time"]),
        "memdet_wall_time": float(process["tot_wall_time"]),
        "max_mem": max_mem,
        "parallel_io": parallel_io,
        "detkit_version": str(info["solver"]["version"]),
    }
