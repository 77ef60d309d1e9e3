"""HDF5 matrix store: one file per formed matrix, keyed by its provenance.

A matrix is formed into ``<key>-m<order>.h5.partial`` and renamed to
``<key>-m<order>.h5`` only after the last block and its attributes are
written, so an interrupted formation is never served as a complete matrix.
A stored matrix of order M also serves every leading block of order k < M.
A formation spread over a cluster writes ``<key>-m<order>.h5.staged`` and
:meth:`MatrixStore.install` renames it. Its dataset may be a virtual dataset
over files in ``<key>-m<order>.parts``, a folder that must stay beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ._api import FormationRecord, MatrixSource

logger = logging.getLogger(__name__)

STORE_ENV = "LDBENCH_STORE"
CHUNK = 512  # rows and columns of an HDF5 chunk: 2 MiB of float64
_NAME = re.compile(r"^(?P<key>[0-9a-f]{16})-m(?P<order>\d+)\.h5$")


def default_store() -> Path:
    """Return the store folder: ``$LDBENCH_STORE`` or ``~/.cache/ldbench/store``."""
    env = os.environ.get(STORE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "ldbench" / "store"


def source_key(source: MatrixSource) -> str:
    """Return the 16-hex-digit key of a source configuration.

    The key hashes the source name, version, resolved parameters and
    fingerprint, so it does not depend on the order parameters were written in.
    """
    payload = json.dumps(
        {
            "source": source.name,
            "version": source.version,
            "params": source.params,
            "fingerprint": source.fingerprint(),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class StoredMatrix:
    """A formed matrix in the store and the cost of the part a case reads.

    Attributes
    ----------
    path
        HDF5 file with the dataset ``"matrix"``.
    stored_order
        Order of the stored dataset (at least ``order``).
    order
        Order of the leading block the case reads.
    formation
        Formation cost attributed to the leading block.
    formation_basis
        ``"measured"`` when the block was formed on its own, ``"pro-rated"``
        when its cost is the full record scaled by its share of the FLOPs.
    """

    path: Path
    stored_order: int
    order: int
    formation: FormationRecord
    formation_basis: str


class _H5BlockWriter:
    """BlockWriter over an h5py dataset, with per-phase accounting."""

    def __init__(self, dataset: h5py.Dataset, order: int, log: Path) -> None:
        self.dataset = dataset
        self.order = order
        self.phases: dict[str, dict[str, float]] = {}
        self.write_seconds = 0.0
        self.bytes_written = 0
        self.log = log
        self.done: set[str] = set()
        self.prior_seconds = 0.0
        self.started = time.perf_counter()
        if log.exists():
            lines = log.read_text(encoding="utf-8").splitlines(keepends=True)
            # A line without its newline was cut by a kill: its step is not done.
            # NOTE: time an interrupted attempt spent after its last finished
            # step is not counted in the formation time.
            for line in lines:
                if line.endswith("\n"):
                    tag, _, elapsed = line.rstrip("\n").rpartition("\t")
                    self.done.add(tag)
                    self.prior_seconds = max(self.prior_seconds, float(elapsed))

    def elapsed(self) -> float:
        """Formation wall time in seconds, including interrupted attempts up
        to their last finished step."""
        return self.prior_seconds + time.perf_counter() - self.started

    def write(self, row: int, col: int, block: np.ndarray) -> None:
        block = np.asarray(block, dtype=np.float64)
        rows, cols = block.shape
        if row < 0 or col < 0 or row + rows > self.order or col + cols > self.order:
            raise IndexError(
                f"block of shape {block.shape} at ({row}, {col}) does not fit in a "
                f"matrix of order {self.order}"
            )
        start = time.perf_counter()
        self.dataset[row : row + rows, col : col + cols] = block
        self.write_seconds += time.perf_counter() - start
        self.bytes_written += block.nbytes

    def add_phase(self, name: str, seconds: float, flops: float = 0.0) -> None:
        phase = self.phases.setdefault(name, {"seconds": 0.0, "flops": 0.0})
        phase["seconds"] += float(seconds)
        phase["flops"] += float(flops)

    def is_done(self, tag: str) -> bool:
        return tag in self.done

    def mark_done(self, tag: str) -> None:
        if "\n" in tag:
            raise ValueError(f"checkpoint tag {tag!r} must not contain a newline")
        # The data reach the file before the tag reaches the log, so a logged
        # step is always stored.
        self.dataset.file.flush()
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(f"{tag}\t{self.elapsed():.6f}\n")
            f.flush()
            os.fsync(f.fileno())
        self.done.add(tag)


class MatrixStore:
    """Folder of formed matrices.

    Parameters
    ----------
    root
        Folder of the store; created when missing.
    """

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_store()
        self.root.mkdir(parents=True, exist_ok=True)

    def _files(self, key: str) -> list[tuple[int, Path]]:
        found = []
        for path in self.root.glob(f"{key}-m*.h5"):
            match = _NAME.match(path.name)
            if match:
                found.append((int(match["order"]), path))
        return sorted(found)

    def lookup(self, source: MatrixSource, order: int) -> Path | None:
        """Return the smallest stored file that contains the leading ``order``."""
        for stored_order, path in self._files(source_key(source)):
            if stored_order >= order:
                return path
        return None

    def ensure(self, source: MatrixSource, order: int | None = None) -> StoredMatrix:
        """Return the stored leading block of ``order``, forming it when missing."""
        full = source.describe().order
        order = full if order is None else int(order)
        if not 1 <= order <= full:
            raise ValueError(f"order {order} is outside 1..{full} for {source.name!r}")
        stored = self._open_readable(source, order)
        if stored is not None:
            return stored
        with _lock(self.root / f"{source_key(source)}-m{order}.lock"):
            # Another process may have formed it while this one waited.
            stored = self._open_readable(source, order)
            if stored is None:
                stored = self.open(source, self._form(source, order), order)
        return stored

    def _open_readable(self, source: MatrixSource, order: int) -> StoredMatrix | None:
        """Open the smallest readable stored file that contains ``order``.

        A damaged file is set aside as ``*.corrupt``, never served, and the
        next candidate is tried; None means the block must be formed.
        """
        while (path := self.lookup(source, order)) is not None:
            try:
                return self.open(source, path, order)
            except (OSError, KeyError, ValueError) as exc:
                corrupt = path.with_name(path.name + ".corrupt")
                logger.warning("stored matrix %s cannot be read (%s: %s); moved it to "
                               "%s", path, type(exc).__name__, exc, corrupt.name)
                os.replace(path, corrupt)
        return None

    def open(self, source: MatrixSource, path: Path, order: int) -> StoredMatrix:
        """Describe a stored file and the formation cost of its leading ``order``."""
        with h5py.File(path, "r") as f:
            stored_order = int(f["matrix"].shape[0])
            attrs = dict(f["matrix"].attrs)
        record = FormationRecord(
            seconds=float(attrs["formation_seconds"]),
            flops=float(attrs["formation_flops"]),
            device=str(attrs["formation_device"]),
            phases=json.loads(attrs.get("formation_phases", "{}")),
        )
        if stored_order == order:
            return StoredMatrix(path, stored_order, order, record, "measured")
        share = _work_share(source, order, stored_order)
        prorated = FormationRecord(
            seconds=record.seconds * share,
            flops=record.flops * share,
            device=record.device,
            phases={},
        )
        return StoredMatrix(path, stored_order, order, prorated, "pro-rated")

    def _form(self, source: MatrixSource, order: int) -> Path:
        if order == source.describe().order:
            self.forget_reference(source)
        key = source_key(source)
        final = self.root / f"{key}-m{order}.h5"
        partial = final.with_name(final.name + ".partial")
        log = final.with_name(final.name + ".done")
        info = source.describe(order)
        dataset_file = _open_partial(partial, log, order)
        resumed = log.exists()
        logger.info("%s %s (order %d) into %s", "resuming" if resumed else "forming",
                    source.name, order, final)
        with dataset_file as f:
            dataset = f["matrix"]
            writer = _H5BlockWriter(dataset, order, log)
            source.form(order, writer)
            seconds = writer.elapsed()
            writer.add_phase("io", writer.write_seconds, 0.0)
            attrs = dataset.attrs
            attrs["source"] = source.name
            attrs["source_version"] = source.version
            attrs["params"] = json.dumps(source.params, sort_keys=True, default=str)
            attrs["fingerprint"] = source.fingerprint()
            attrs["structure"] = info.structure.value
            attrs["block_size"] = info.block_size
            attrs["formation_seconds"] = seconds
            attrs["formation_flops"] = float(source.formation_flops(order))
            attrs["formation_device"] = source.device
            attrs["formation_phases"] = json.dumps(writer.phases)
            attrs["formation_resumed"] = resumed
            attrs["formed_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            attrs["complete"] = True
        os.replace(partial, final)
        log.unlink(missing_ok=True)
        logger.info("formed %s in %.2f s", final.name, seconds)
        return final

    def staging_paths(self, source: MatrixSource, order: int) -> tuple[Path, Path]:
        """Return where a formation outside this process writes the leading
        block of ``order`` before :meth:`install`: the file, and a folder for
        the pieces a virtual dataset in that file refers to."""
        stem = f"{source_key(source)}-m{order}"
        return self.root / f"{stem}.h5.staged", self.root / f"{stem}.parts"

    def install(
        self,
        source: MatrixSource,
        order: int,
        path: Path,
        formation: FormationRecord,
        attributes: dict[str, Any] | None = None,
    ) -> Path:
        """Record provenance and cost in a formed file and rename it into the store.

        Parameters
        ----------
        path
            HDF5 file in the store folder with the dataset ``"matrix"`` of
            shape ``(order, order)``, which may be a virtual dataset.
        formation
            Cost of the formation; ``seconds`` is what the cost metric prices.
        attributes
            Extra attributes for the dataset, such as the elapsed time of a
            formation spread over several workers.

        Raises
        ------
        ValueError
            When the dataset's shape is not ``(order, order)``.
        """
        final = self.root / f"{source_key(source)}-m{order}.h5"
        info = source.describe(order)
        with h5py.File(path, "r+") as f:
            dataset = f["matrix"]
            if dataset.shape != (order, order):
                raise ValueError(f"{path}: dataset 'matrix' has shape {dataset.shape}, "
                                 f"expected ({order}, {order}) for {source.name!r}")
            attrs = dataset.attrs
            attrs["source"] = source.name
            attrs["source_version"] = source.version
            attrs["params"] = json.dumps(source.params, sort_keys=True, default=str)
            attrs["fingerprint"] = source.fingerprint()
            attrs["structure"] = info.structure.value
            attrs["block_size"] = info.block_size
            attrs["formation_seconds"] = float(formation.seconds)
            attrs["formation_flops"] = float(formation.flops)
            attrs["formation_device"] = formation.device
            attrs["formation_phases"] = json.dumps(formation.phases)
            attrs["formation_resumed"] = False
            attrs["formed_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            for name, value in (attributes or {}).items():
                attrs[name] = value
            attrs["complete"] = True
        os.replace(path, final)
        logger.info("installed %s (%.2f s of formation)", final.name, formation.seconds)
        return final

    def reference(
        self, source: MatrixSource, method: str | None = None
    ) -> dict[str, Any] | None:
        """Return the cached reference log-det of the full matrix, or None.

        With ``method``, a value cached by another reference method is ignored,
        so a suite that requests a different reference solver computes its own.
        """
        path = self._reference_path(source)
        if not path.exists():
            return None
        cached = json.loads(path.read_text())
        if method is not None and cached.get("method") != method:
            return None
        return cached

    def forget_reference(self, source: MatrixSource) -> None:
        """Drop the cached reference, as when the full matrix is formed again."""
        self._reference_path(source).unlink(missing_ok=True)

    def set_reference(
        self, source: MatrixSource, logabsdet: float, sign: float, method: str
    ) -> None:
        """Cache the reference log-det of the full matrix and how it was computed.

        The value goes into a JSON file beside the matrix and into the HDF5
        attributes of the stored full matrix when there is one.
        """
        record = {"logabsdet": float(logabsdet), "sign": float(sign), "method": method}
        path = self._reference_path(source)
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)
        full = source.describe().order
        stored = self.lookup(source, full)
        if stored is None:
            return
        try:
            with h5py.File(stored, "r+") as f:
                f["matrix"].attrs["reference_logdet"] = float(logabsdet)
                f["matrix"].attrs["reference_sign"] = float(sign)
                f["matrix"].attrs["reference_method"] = method
        except OSError as exc:
            # HDF5 locks a file that another process has open, such as a second
            # run on the same store. The JSON record above is what lookups read.
            logger.info("reference of %s kept in %s only, because %s is in use (%s)",
                        source_key(source), path.name, stored, exc)

    def _reference_path(self, source: MatrixSource) -> Path:
        return self.root / f"{source_key(source)}.reference.json"


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (fcntl.flock) on ``path``, so two
    processes never form the same matrix into one partial file."""
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _open_partial(partial: Path, log: Path, order: int) -> h5py.File:
    """Open the partial file of an interrupted formation, or create a new one.

    The dataset's chunks are allocated when it is created, so writing a block
    changes no HDF5 metadata and a kill between writes leaves the file
    readable. A file that cannot be opened is formed again from scratch.
    """
    if partial.exists() and log.exists():
        try:
            f = h5py.File(partial, "r+")
            if f["matrix"].shape == (order, order):
                return f
            f.close()
        except (OSError, KeyError) as exc:
            logger.warning("cannot resume %s (%s); forming it again", partial, exc)
    partial.unlink(missing_ok=True)
    log.unlink(missing_ok=True)
    f = h5py.File(partial, "w")
    chunk = min(order, CHUNK)
    plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    plist.set_chunk((chunk, chunk))
    plist.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    plist.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    space = h5py.h5s.create_simple((order, order))
    h5py.h5d.create(f.id, b"matrix", h5py.h5t.IEEE_F64LE, space, dcpl=plist)
    f.flush()
    return f


def _work_share(source: MatrixSource, order: int, stored_order: int) -> float:
    """Share of the formation work of ``stored_order`` spent on its leading
    ``order`` block: the ratio of analytic FLOPs, or of entries when a source
    gives no FLOP count."""
    full_flops = source.formation_flops(stored_order)
    if full_flops > 0:
        return float(source.formation_flops(order)) / float(full_flops)
    return (order / stored_order) ** 2
