"""Checkpoint state of a factorisation: the next step and the log-dets so far.

The state is one JSON file, replaced atomically (write a temporary file, fsync,
rename, fsync the folder), next to the step file it points to. A state whose
identity differs from the current run is ignored.
"""

from __future__ import annotations

import json
import logging
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
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump(record, file)
        file.flush()
        if durable:
            os.fsync(file.fileno())
    os.replace(temporary, path)
    if not durable:
        return
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_state(
    folder: Path, identity: dict[str, Any]
) -> tuple[int, list[BlockLogdet]] | None:
    """Return ``(next_step, parts)`` of a matching checkpoint, or ``None``."""
    path = folder / STATE_NAME
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable checkpoint %s: %s", path, exc)
        return None
    if record.get("format") != FORMAT or record.get("identity") != identity:
        logger.warning(
            "ignoring checkpoint %s: it belongs to another matrix or configuration",
            path,
        )
        return None
    parts = [
        BlockLogdet(float(logabsdet), float(sign), dict(counts))
        for logabsdet, sign, counts in record["parts"]
    ]
    return int(record["next_step"]), parts
