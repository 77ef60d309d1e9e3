"""Tests of the file source on HDF5, .npy and zarr files written here."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import ArrayWriter, form_dense
from ldbench_file import FileSource, ldbench_register_sources

from ldbench import ParameterError, Structure


def sample_matrix(order: int = 12) -> np.ndarray:
    """Return a matrix whose entries are distinct and exact in float64."""
    return np.arange(order * order, dtype=np.float64).reshape(order, order) / 8.0 - 3.0


def test_plugin_registers_source():
    registered: list[type] = []
    ldbench_register_sources(registered.append)
    assert registered == [FileSource]


def test_npy_round_trip_in_strips(tmp_path):
    matrix = sample_matrix()
    path = tmp_path / "m.npy"
    np.save(path, matrix)
    source = FileSource(path=str(path), structure="symmetric", block_size=3)
    source.block_bytes = 16 * 12 * 5  # 5 rows per strip
    info = source.describe()
    assert info.order == 12
    assert info.structure is Structure.SYMMETRIC
    assert info.block_size == 3
    assert info.logdet is None
    assert np.array_equal(form_dense(source), matrix)


def test_npy_integer_and_float32(tmp_path):
    integers = np.arange(16, dtype=np.int32).reshape(4, 4)
    np.save(tmp_path / "i.npy", integers)
    np.save(tmp_path / "f.npy", integers.astype(np.float32) / 4)
    assert np.array_equal(
        form_dense(FileSource(path=str(tmp_path / "i.npy"))), integers
    )
    halves = form_dense(FileSource(path=str(tmp_path / "f.npy")))
    assert halves.dtype == np.float64
    assert np.array_equal(halves, integers / 4.0)


def test_hdf5_round_trip_nested_dataset(tmp_path):
    matrix = sample_matrix(10)
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("group/kernel", data=matrix, chunks=(3, 3))
    source = FileSource(path=str(path))
    source.block_bytes = 16 * 10 * 4
    assert np.array_equal(form_dense(source), matrix)
    named = FileSource(path=str(path), dataset="group/kernel")
    assert np.array_equal(form_dense(named, 6), matrix[:6, :6])


def test_hdf5_picks_named_dataset(tmp_path):
    path = tmp_path / "two.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("a", data=np.eye(3))
        f.create_dataset("b", data=2.0 * np.eye(4))
    source = FileSource(
        path=str(path), dataset="b", structure="spd", logdet=4 * np.log(2.0)
    )
    info = source.describe()
    assert info.order == 4
    assert info.sign == 1.0
    assert info.logdet == 4 * np.log(2.0)
    assert np.array_equal(form_dense(source), 2.0 * np.eye(4))


def test_leading_block_and_logdet(tmp_path):
    matrix = sample_matrix(9)
    path = tmp_path / "m.npy"
    np.save(path, matrix)
    source = FileSource(path=str(path), logdet=-1.5, sign=-1.0)
    writer = ArrayWriter(4)
    source.form(4, writer)
    assert np.array_equal(writer.array, matrix[:4, :4])
    assert source.describe().logdet == -1.5
    assert source.describe().sign == -1.0
    assert source.describe(4).logdet is None
    assert source.describe(4).sign is None


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "absent.npy"
    source = FileSource(path=str(path))
    with pytest.raises(FileNotFoundError, match="absent.npy"):
        source.check_available()
    with pytest.raises(FileNotFoundError, match="absent.npy"):
        source.fingerprint()


def test_unknown_extension_lists_supported(tmp_path):
    with pytest.raises(ParameterError, match=r"'\.csv'.*\.h5, \.hdf5, \.npy, \.zarr"):
        FileSource(path=str(tmp_path / "m.csv"))


def test_missing_dataset_lists_available(tmp_path):
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("first", data=np.eye(2))
        f.create_dataset("second", data=np.eye(2))
    with pytest.raises(ParameterError, match="'kernel' not found.*'first', 'second'"):
        FileSource(path=str(path), dataset="kernel").check_available()
    with pytest.raises(ParameterError, match="2 datasets.*'first', 'second'"):
        FileSource(path=str(path)).describe()


@pytest.mark.parametrize(
    ("array", "fragment"),
    [
        (np.zeros((3, 4)), "3 x 4 matrix, which is not square"),
        (np.zeros((2, 2, 2)), r"shape \(2, 2, 2\), which is not 2-D"),
        (np.zeros(5), r"shape \(5,\), which is not 2-D"),
        (np.zeros((2, 2), dtype=complex), "complex dtype complex128"),
        (np.zeros((2, 2), dtype="U3"), "non-numeric dtype <U3"),
        (np.zeros((2, 2), dtype=bool), "non-numeric dtype bool"),
    ],
)
def test_invalid_arrays_rejected(tmp_path, array, fragment):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(ParameterError, match=fragment):
        FileSource(path=str(path)).check_available()


def test_object_array_rejected(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([[1, "a"], [2, "b"]], dtype=object), allow_pickle=True)
    with pytest.raises(ParameterError, match="objects.npy"):
        FileSource(path=str(path)).check_available()


def test_nonfinite_entries_rejected(tmp_path):
    matrix = np.eye(6)
    matrix[4, 1] = np.nan
    path = tmp_path / "nan.npy"
    np.save(path, matrix)
    source = FileSource(path=str(path))
    source.block_bytes = 16 * 6 * 2
    with pytest.raises(ValueError, match=r"entry \(4, 1\) of .*nan.npy. is nan"):
        source.form(6, ArrayWriter(6))
    writer = ArrayWriter(4)
    source.form(4, writer)  # the NaN lies outside the leading block
    assert np.array_equal(writer.array, np.eye(4))


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"block_size": 5}, "order 12 .* not a multiple of block_size = 5"),
        ({"dataset": "x"}, "dataset = 'x' does not apply to the .npy file"),
        ({"sign": -1.0}, "sign = -1.0 is given without logdet"),
        ({"structure": "spd", "logdet": 1.0, "sign": -1.0}, "sign = -1.0 contradicts"),
        ({"structure": "hermitian"}, "'hermitian'"),
    ],
)
def test_bad_parameters_name_value(tmp_path, params, fragment):
    path = tmp_path / "m.npy"
    np.save(path, sample_matrix())
    with pytest.raises(ParameterError, match=fragment):
        FileSource(path=str(path), **params).check_available()


def test_order_checks(tmp_path):
    path = tmp_path / "m.npy"
    np.save(path, sample_matrix())
    source = FileSource(path=str(path), block_size=4)
    with pytest.raises(ValueError, match="order 6 is not a multiple of block_size = 4"):
        source.describe(6)
    with pytest.raises(ValueError, match="order 16 is outside 1..12"):
        source.describe(16)


def test_fingerprint_changes_with_file(tmp_path):
    path = tmp_path / "m.npy"
    np.save(path, sample_matrix(4))
    source = FileSource(path=str(path))
    first = source.fingerprint()
    assert first.startswith(str(path.resolve()) + "|")
    assert first == source.fingerprint()
    np.save(path, sample_matrix(5))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = source.fingerprint()
    assert second != first
    assert second.split("|")[1] == str(path.stat().st_size)


def test_relative_path_resolved(tmp_path, monkeypatch):
    np.save(tmp_path / "m.npy", np.eye(3))
    monkeypatch.chdir(tmp_path)
    source = FileSource(path="m.npy")
    assert source.path == Path(tmp_path / "m.npy").resolve()
    assert np.array_equal(form_dense(source), np.eye(3))


def test_zarr_missing_names_install_command(tmp_path, monkeypatch):
    # A None entry in sys.modules makes `import zarr` raise ImportError.
    monkeypatch.setitem(sys.modules, "zarr", None)
    (tmp_path / "m.zarr").mkdir()
    source = FileSource(path=str(tmp_path / "m.zarr"))
    with pytest.raises(ModuleNotFoundError, match="pip install zarr"):
        source.check_available()


def test_zarr_round_trip(tmp_path):
    zarr = pytest.importorskip("zarr")
    matrix = sample_matrix(8)
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("kernel", data=matrix, chunks=(3, 3))
    group.create_array("other", data=np.eye(2))
    source = FileSource(path=str(tmp_path / "g.zarr"), dataset="kernel")
    source.block_bytes = 16 * 8 * 3
    assert np.array_equal(form_dense(source), matrix)
    with pytest.raises(ParameterError, match="'kernel', 'other'"):
        FileSource(path=str(tmp_path / "g.zarr")).describe()
    single = zarr.create_array(str(tmp_path / "a.zarr"), data=matrix[:5, :5])
    assert single.shape == (5, 5)
    assert np.array_equal(
        form_dense(FileSource(path=str(tmp_path / "a.zarr"))), matrix[:5, :5]
    )
    assert FileSource(path=str(tmp_path / "a.zarr")).fingerprint().count("|") == 2
