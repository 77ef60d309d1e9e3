"""Calls into detkit: its import, its block-count rule and its failures.

The rules here mirror detkit 0.12.3 (``detkit/_functions/_memdet_io.py`` and
the messages of its LAPACK wrappers). A newer detkit may change them.
"""

from __future__ import annotations

import logging
import math
import re
import signal
import threading
from collections.abc import Callable
from typing import Any

from ldbench import ParameterError

logger = logging.getLogger(__name__)

# Binary units, as detkit 0.12.3 reads max_mem strings.
_MEMORY_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
_MEMORY_PATTERN = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?B)\s*", re.IGNORECASE)

# Message of detkit's Cholesky, LDL and LU wrappers when LAPACK returns
# info > 0, such as "LU decomposition failed with error code: 25".
_PIVOT_FAILURE = re.compile(r"decomposition failed with error code: (\d+)")

_DETKIT_SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGTSTP")
    if hasattr(signal, name)
)


def import_memdet() -> Callable[..., Any]:
    """Import and return ``detkit.memdet``, keeping the process's signal handlers.

    NOTE: importing detkit 0.12.3 installs one handler for SIGINT, SIGTERM and
    SIGTSTP that resets terminal colours. For SIGTERM it does nothing else, so
    the process ignores SIGTERM, and for SIGINT it calls ``sys.exit(0)``. This
    function puts back the handlers that were installed before the import
    (Python's defaults when detkit was imported earlier). It can do so only in
    the main thread. Elsewhere it logs a warning and detkit's handlers stay.
    """
    saved = {sig: signal.getsignal(sig) for sig in _DETKIT_SIGNALS}
    from detkit import memdet

    if threading.current_thread() is not threading.main_thread():
        if any(_is_detkit_handler(signal.getsignal(s)) for s in _DETKIT_SIGNALS):
            logger.warning(
                "detkit replaced the SIGINT/SIGTERM handlers and they cannot be "
                "restored outside the main thread, so SIGTERM is ignored until exit"
            )
        return memdet

    for sig in _DETKIT_SIGNALS:
        if not _is_detkit_handler(signal.getsignal(sig)):
            continue
        previous = saved[sig]
        if previous is None or _is_detkit_handler(previous):
            previous = (
                signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            )
        signal.signal(sig, previous)
        logger.debug(
            "restored the %s handler that detkit replaced", signal.Signals(sig).name
        )
    return memdet


def _is_detkit_handler(handler: Any) -> bool:
    return getattr(handler, "__module__", "").startswith("detkit")


def parse_memory(text: str) -> int | None:
    """Return the number of bytes in a memory size such as ``"64MB"``.

    Units are binary (1 KB = 1024 B), as in detkit. An empty string means no
    limit and gives ``None``.

    Raises
    ------
    ParameterError
        When ``text`` is not a positive number followed by B, KB, MB, GB or TB.
    """
    if not text.strip():
        return None
    match = _MEMORY_PATTERN.fullmatch(text)
    if match is None:
        raise ParameterError(
            f"solver 'memdet': parameter 'max_mem' = {text!r} is not a memory size. "
            "Write a number and a unit such as '512MB' or '16GB', or '' for no limit"
        )
    number, unit = match.groups()
    size = int(float(number) * _MEMORY_UNITS[unit.upper()])
    if size <= 0:
        raise ParameterError(
            f"solver 'memdet': parameter 'max_mem' = {text!r} must be positive"
        )
    return size


def detkit_num_blocks(order: int, num_blocks: int, max_mem: int | None) -> int:
    """Return the n_b that memdet uses for a matrix of ``order``.

    With ``max_mem`` (bytes) detkit ignores ``num_blocks``: it sets
    ``r = order * sqrt(8 / max_mem)`` for float64 and uses 1 block when
    ``r <= 1``, 2 when ``r <= 2 / sqrt(3)`` and ``ceil(2 r)`` otherwise.
    """
    if max_mem is None:
        return num_blocks
    ratio = order * math.sqrt(8.0 / max_mem)
    if ratio <= 1.0:
        return 1
    if ratio <= 2.0 / math.sqrt(3.0):
        return 2
    return math.ceil(2.0 * ratio)


def block_order(order: int, num_blocks: int) -> int:
    """Return the order of memdet's diagonal blocks (the last one may be smaller)."""
    return -(-order // num_blocks)


def check_num_blocks(order: int, num_blocks: int, max_mem: int | None) -> None:
    """Raise ParameterError when memdet would reject the block grid.

    detkit requires every block row to be non-empty, that is
    ``block_order * (num_blocks - 1) < order``.
    """
    blocks = detkit_num_blocks(order, num_blocks, max_mem)
    if block_order(order, blocks) * (blocks - 1) < order:
        return
    usable = max(b for b in range(1, blocks) if block_order(order, b) * (b - 1) < order)
    if max_mem is None:
        cause = f"num_blocks={num_blocks}"
        fix = f"Use num_blocks <= {usable}."
    else:
        cause = f"max_mem={max_mem} bytes gives {blocks} blocks, which"
        fix = "Raise max_mem."
    raise ParameterError(
        f"solver 'memdet': {cause} leaves an empty block row for a matrix of "
        f"order {order}. {fix}"
    )


def pivot_failure_index(exc: BaseException) -> int | None:
    """Return LAPACK's ``info`` from a failed diagonal-block factorisation.

    ``info`` is 1-based and counted within the diagonal block that failed.
    Returns ``None`` when ``exc`` is another kind of failure.
    """
    match = _PIVOT_FAILURE.search(str(exc))
    return int(match.group(1)) if match else None


def log_output(text: str) -> None:
    """Log what detkit printed to stdout, without its ANSI colour codes."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text).strip()
    if plain:
        logger.debug("detkit output: %s", plain)
