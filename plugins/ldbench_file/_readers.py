"""Opening a 2-D array in an HDF5, ``.npy`` or zarr file and checking it.

:func:`open_matrix` yields an object with ``shape``, ``dtype`` and NumPy
slicing (an h5py dataset, a read-only memory map, or a zarr array), so the
caller reads row strips without loading the whole matrix.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ldbench import ParameterError

logger = logging.getLogger(__name__)

HDF5_EXTENSIONS = (".h5", ".hdf5")
SUPPORTED_EXTENSIONS = (*HDF5_EXTENSIONS, ".npy", ".zarr")


def file_format(path: Path) -> str:
    """Return ``"hdf5"``, ``"npy"`` or ``"zarr"`` from the extension of ``path``."""
    suffix = path.suffix.lower()
    if suffix in HDF5_EXTENSIONS:
        return "hdf5"
    if suffix == ".npy":
        return "npy"
    if suffix == ".zarr":
        return "zarr"
    raise ParameterError(
        f"source 'file': unsupported extension {suffix!r} of {str(path)!r}; "
        f"supported extensions: {', '.join(SUPPORTED_EXTENSIONS)}"
    )


def _pick_name(path: Path, dataset: str, available: list[str]) -> str:
    """Return the dataset to read, or raise ParameterError listing the choices."""
    listing = ", ".join(repr(name) for name in available) or "none"
    if dataset:
        if dataset.strip("/") in available:
            return dataset.strip("/")
        raise ParameterError(
            f"source 'file': dataset {dataset!r} not found in {str(path)!r}; "
            f"available datasets: {listing}"
        )
    if len(available) == 1:
        return available[0]
    raise ParameterError(
        f"source 'file': {str(path)!r} contains {len(available)} datasets, so the "
        f"dataset parameter must name one; available datasets: {listing}"
    )


def _hdf5_names(group: Any) -> list[str]:
    import h5py

    names: list[str] = []

    def visit(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset):
            names.append(name)

    group.visititems(visit)
    return sorted(names)


def _zarr_names(group: Any, prefix: str = "") -> list[str]:
    names = [prefix + name for name in group.array_keys()]
    for name in group.group_keys():
        names += _zarr_names(group[name], f"{prefix}{name}/")
    return sorted(names)


def _import_zarr() -> Any:
    try:
        import zarr
    except ImportError as exc:
        raise ModuleNotFoundError(
            "source 'file': reading .zarr files needs the zarr package, which is "
            "not installed; install it with `pip install zarr`",
            name="zarr",
        ) from exc
    return zarr


@contextmanager
def open_matrix(path: Path, dataset: str = "") -> Iterator[Any]:
    """Open the 2-D array stored at ``path`` for reading.

    Parameters
    ----------
    path
        File (``.h5``, ``.hdf5``, ``.npy``) or zarr store (``.zarr``).
    dataset
        Name of the dataset inside an HDF5 file or a zarr group; ``""`` picks
        the only one. Must be ``""`` for ``.npy`` files.

    Yields
    ------
    array-like
        The array, readable by slicing, valid until the context exits.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ParameterError
        On an unsupported extension or a missing or ambiguous dataset.
    ModuleNotFoundError
        When a ``.zarr`` store is given and zarr is not installed.
    """
    kind = file_format(path)
    if not path.exists():
        raise FileNotFoundError(
            f"source 'file': matrix file {str(path)!r} not found; check the path "
            f"parameter"
        )
    if kind == "npy":
        if dataset:
            raise ParameterError(
                f"source 'file': dataset = {dataset!r} does not apply to the .npy "
                f"file {str(path)!r}, which contains one array; remove the parameter"
            )
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise ParameterError(
                f"source 'file': cannot read {str(path)!r} as a numeric array: {exc}"
            ) from exc
        yield array
        return
    if kind == "zarr":
        zarr = _import_zarr()
        node = zarr.open(str(path), mode="r")
        if hasattr(node, "array_keys"):
            node = node[_pick_name(path, dataset, _zarr_names(node))]
        elif dataset:
            raise ParameterError(
                f"source 'file': dataset = {dataset!r} does not apply to "
                f"{str(path)!r}, which is a single zarr array; remove the parameter"
            )
        yield node
        return
    import h5py

    with h5py.File(path, "r") as handle:
        yield handle[_pick_name(path, dataset, _hdf5_names(handle))]


def check_matrix(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Return the order of a square real matrix, or raise ParameterError."""
    if len(shape) != 2:
        raise ParameterError(
            f"source 'file': {str(path)!r} contains an array of shape {tuple(shape)}, "
            f"which is not 2-D; store a square matrix"
        )
    if shape[0] != shape[1]:
        raise ParameterError(
            f"source 'file': {str(path)!r} contains a {shape[0]} x {shape[1]} matrix, "
            f"which is not square; store a square matrix"
        )
    if dtype.kind == "c":
        raise ParameterError(
            f"source 'file': {str(path)!r} has complex dtype {dtype}; only real "
            f"matrices are supported"
        )
    if dtype.kind not in "iuf":
        raise ParameterError(
            f"source 'file': {str(path)!r} has non-numeric dtype {dtype}; store "
            f"integer or floating-point values"
        )
    if shape[0] < 1:
        raise ParameterError(f"source 'file': {str(path)!r} contains an empty matrix")
    return int(shape[0])
