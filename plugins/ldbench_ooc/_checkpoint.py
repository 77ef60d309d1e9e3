"""Checkpoint state of a factorisation: the next step and the log-dets so far.

The state is one JSON file, replaced atomically (write a temporary file, fsync,
rename, fsync the folder), next to the step file it points to. A state whose
identity differs from the current run is ignored.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from ._pivots import BlockLogdet

logger = logging.getLogger(__name__)

STATE_NAME = "state.json"
FORMAT = 2


def save_state(
    folder: Path,
    identity: dict[str, Any],
    next_step: int,
    parts: list[BlockLogdet],
    durable: bool = True,
) -> None:
    """Record that steps ``0 .. next_step - 1`` are finished.

    The replacement is atomic for other processes either way. With
    ``durable``, the record is also flushed to the disk, so it survives a
    power loss.
    """
    record = {
        "format": FORMAT,
        "identity": identity,
        "next_step": next_step,
        "parts": [[part.logabsdet, part.sign, part.counts] for part in parts],
    }
    path = folder / STATE_NAME
    temporary = path.with_name(path.name + ".partial")
    try:
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(record, file)
            file.flush()
            if durable:
                os.fsync(file.fileno())
        os.replace(temporary, path)
        if durable:
            directory = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise OSError(
            exc.errno,
            f"saving the checkpoint {path} failed: {exc.strerror}. Free space on "
            "that disk or choose another scratch folder (checkpoint_dir, or the "
            "run folder that --out names)",
            str(path),
        ) from exc


def load_state(
    folder: Path, identity: dict[str, Any], num_blocks: int
) -> tuple[int, list[BlockLogdet]] | None:
    """Return ``(next_step, parts)`` of a matching checkpoint, or ``None``.

    A checkpoint that cannot be read, belongs to another configuration or is
    not consistent (``next_step`` outside ``1 .. num_blocks - 1``, another
    number of parts, a log-determinant that is not finite) is ignored with a
    warning, and the factorisation starts over.
    """
    path = folder / STATE_NAME
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable checkpoint %s: %s", path, exc)
        return None
    if not isinstance(record, dict):
        logger.warning("ignoring checkpoint %s: it is not a JSON object", path)
        return None
    if record.get("format") != FORMAT or record.get("identity") != identity:
        logger.warning(
            "ignoring checkpoint %s: it belongs to another matrix or configuration",
            path,
        )
        return None
    try:
        next_step = record["next_step"]
        parts = [
            BlockLogdet(float(logabsdet), float(sign), dict(counts))
            for logabsdet, sign, counts in record["parts"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        logger.warning("ignoring malformed checkpoint %s: %r", path, exc)
        return None
    consistent = (
        isinstance(next_step, int)
        and 1 <= next_step < num_blocks
        and len(parts) == next_step
        and all(math.isfinite(part.logabsdet) and part.sign in (-1.0, 1.0)
                for part in parts)
    )
    if not consistent:
        logger.warning(
            "ignoring inconsistent checkpoint %s: next_step=%r with %d parts",
            path, next_step, len(parts),
        )
        return None
    return next_step, parts
