"""The ``file`` matrix source."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import ClassVar

import numpy as np

from ldbench import (
    BlockWriter,
    MatrixInfo,
    MatrixSource,
    Param,
    ParameterError,
    Structure,
    check_leading_order,
)

from ._readers import SUPPORTED_EXTENSIONS, check_matrix, file_format, open_matrix

logger = logging.getLogger(__name__)


class FileSource(MatrixSource):
    """A square matrix stored by the user in an HDF5, ``.npy`` or zarr file.

    Integer and floating-point matrices are read in row strips and written
    as float64. ``.npy`` files are memory-mapped, HDF5 files are read with
    h5py, and ``.zarr`` stores need the optional zarr package.

    NOTE: ``structure`` is taken from the parameters and not verified, so a
    wrong claim (``"spd"`` for an indefinite matrix) shows up only as a
    solver failure or a wrong estimate.

    Attributes
    ----------
    block_bytes
        Memory budget, in bytes, of one row strip during :meth:`form`.
    """

    name: ClassVar[str] = "file"
    version: ClassVar[str] = "1"
    parameters: ClassVar[dict[str, Param]] = {
        "path": Param(
            None,
            str,
            f"matrix file ({', '.join(SUPPORTED_EXTENSIONS)}); '~' is expanded",
            required=True,
        ),
        "dataset": Param(
            "", str, "dataset inside an HDF5 file or zarr group; '' for the only one"
        ),
        "structure": Param(
            "general",
            str,
            "structure the matrix has, which selects the solvers that accept it",
            choices=tuple(s.value for s in Structure),
        ),
        "block_size": Param(
            1, int, "outputs per sample d; the order must be a multiple", minimum=1
        ),
        "logdet": Param(
            None, float, "exact natural log|det| of the whole matrix, if known"
        ),
        "sign": Param(
            None,
            float,
            "sign of det when logdet is given (default 1)",
            choices=(-1.0, 0.0, 1.0),
        ),
    }

    block_bytes: int = 256 * 2**20

    @property
    def path(self) -> Path:
        """The matrix file, with ``~`` expanded and made absolute."""
        return Path(self.params["path"]).expanduser().resolve()

    def validate(self) -> None:
        """Check the extension and the log-det parameters without opening the file."""
        p = self.params
        file_format(self.path)
        if p["sign"] is not None and p["logdet"] is None:
            raise ParameterError(
                f"source 'file': sign = {p['sign']!r} is given without logdet; set "
                f"logdet too, or remove sign"
            )
        if p["structure"] == "spd" and p["sign"] not in (None, 1.0):
            raise ParameterError(
                f"source 'file': sign = {p['sign']!r} contradicts structure = 'spd', "
                f"whose determinant is positive; set sign = 1 or change structure"
            )

    def check_available(self) -> None:
        """Open the file and check that it contains a square real matrix.

        Raises
        ------
        FileNotFoundError
            When the file does not exist.
        ParameterError
            On a missing dataset, a matrix that is not square, 2-D and real,
            or an order that is not a multiple of ``block_size``.
        ModuleNotFoundError
            For a ``.zarr`` store when zarr is not installed.
        """
        self._full_order()

    def fingerprint(self) -> str:
        """Return the resolved path, size in bytes and modification time (ns).

        For a zarr store, a directory, the size is the total of its files and
        the time is the latest of theirs.
        """
        path = self.path
        if not path.exists():
            raise FileNotFoundError(
                f"source 'file': matrix file {str(path)!r} not found; check the path "
                f"parameter"
            )
        if path.is_dir():
            size, mtime = 0, path.stat().st_mtime_ns
            for root, _, files in os.walk(path):
                for name in files:
                    stat = os.stat(os.path.join(root, name))
                    size += stat.st_size
                    mtime = max(mtime, stat.st_mtime_ns)
        else:
            stat = path.stat()
            size, mtime = stat.st_size, stat.st_mtime_ns
        return f"{path}|{size}|{mtime}"

    def _full_order(self) -> int:
        with open_matrix(self.path, self.params["dataset"]) as array:
            order = check_matrix(self.path, array.shape, np.dtype(array.dtype))
        d = self.params["block_size"]
        if order % d != 0:
            raise ParameterError(
                f"source 'file': the order {order} of {str(self.path)!r} is not a "
                f"multiple of block_size = {d}; set block_size to a divisor of {order}"
            )
        return order

    def describe(self, order: int | None = None) -> MatrixInfo:
        """Describe the stored matrix or its leading ``order x order`` block.

        Reads only the file's metadata. ``logdet`` is the given value for the
        whole matrix and ``None`` for a proper leading block.
        """
        full = self._full_order()
        order = check_leading_order(order, full, self.params["block_size"])
        p = self.params
        logdet = p["logdet"] if order == full else None
        sign = None
        if logdet is not None:
            sign = 1.0 if p["sign"] is None else p["sign"]
        return MatrixInfo(
            order=order,
            structure=Structure(p["structure"]),
            block_size=p["block_size"],
            logdet=logdet,
            sign=sign,
            description=f"file {self.path.name} m={order}",
        )

    def form(self, order: int, out: BlockWriter) -> None:
        """Copy the leading ``order x order`` block into ``out`` in row strips.

        Raises
        ------
        ValueError
            When a strip contains NaN or infinite values.
        """
        full = self._full_order()
        order = check_leading_order(order, full, self.params["block_size"])
        # A strip in the file's dtype plus its float64 copy.
        rows = max(1, min(order, self.block_bytes // (16 * order)))
        logger.debug("copying %s, order %d, %d rows per strip", self.path, order, rows)
        with open_matrix(self.path, self.params["dataset"]) as array:
            for r0 in range(0, order, rows):
                r1 = min(order, r0 + rows)
                strip = np.asarray(array[r0:r1, :order], dtype=np.float64)
                if not np.isfinite(strip).all():
                    row, col = np.argwhere(~np.isfinite(strip))[0]
                    raise ValueError(
                        f"source 'file': entry ({r0 + row}, {col}) of "
                        f"{str(self.path)!r} is {strip[row, col]} (first non-finite "
                        f"entry, in rows {r0}..{r1 - 1}); the log-determinant needs "
                        "finite entries, so fix or replace the matrix file"
                    )
                out.write(r0, 0, strip)
