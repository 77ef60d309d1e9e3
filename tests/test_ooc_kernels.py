"""Strided BLAS calls, recursive triangular solves, the raw HDF5 chunk reader
and the step files of the ooc engine, against scipy, numpy and h5py in
float64."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.linalg
from ldbench_ooc import BlockGrid, MatrixInput, _blas, factorize, input_from_file
from ldbench_ooc._io import ALIGN, RawChunks, ScratchFiles, aligned_buffer

ORDERS = (1, 2, _blas.LEAF - 1, _blas.LEAF, _blas.LEAF + 1, 300, 517)


def triangle(order: int, seed: int) -> np.ndarray:
    """Return a well-conditioned triangular matrix in Fortran order, with
    random entries in the other triangle that a solve must not read."""
    rng = np.random.default_rng(seed)
    full = rng.uniform(-1.0, 1.0, (order, order)) / np.sqrt(order)
    full[np.diag_indices(order)] = rng.uniform(1.0, 2.0, order)
    return np.asfortranarray(full)


def part(matrix: np.ndarray, lower: bool, unit: bool = False) -> np.ndarray:
    """Return the triangle that a solve uses, with a unit diagonal if asked."""
    result = np.tril(matrix) if lower else np.triu(matrix)
    if unit:
        result[np.diag_indices(matrix.shape[0])] = 1.0
    return result


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("unit", [False, True])
def test_solve_right_lower_transposed(order, unit):
    factor = triangle(order, order)
    rhs = np.asfortranarray(np.random.default_rng(1).standard_normal((257, order)))
    expected = rhs @ np.linalg.inv(part(factor, True, unit).T)
    _blas.solve_right_lower_transposed(factor, rhs, unit=unit)
    np.testing.assert_allclose(rhs, expected, rtol=0, atol=1e-12 * abs(expected).max())


@pytest.mark.parametrize("order", ORDERS)
def test_solve_right_upper(order):
    factor = triangle(order, order)
    rhs = np.asfortranarray(np.random.default_rng(2).standard_normal((133, order)))
    expected = scipy.linalg.solve_triangular(part(factor, False).T, rhs.T, lower=True).T
    _blas.solve_right_upper(factor, rhs)
    np.testing.assert_allclose(rhs, expected, rtol=0, atol=1e-12 * abs(expected).max())


@pytest.mark.parametrize("order", ORDERS)
def test_solve_left_lower_unit(order):
    factor = triangle(order, order)
    rhs = np.asfortranarray(np.random.default_rng(3).standard_normal((order, 190)))
    expected = scipy.linalg.solve_triangular(
        part(factor, True, unit=True), rhs, lower=True, unit_diagonal=True
    )
    _blas.solve_left_lower_unit(factor, rhs)
    np.testing.assert_allclose(rhs, expected, rtol=0, atol=1e-12 * abs(expected).max())


def test_gemm_syrk_strided_sub_blocks():
    rng = np.random.default_rng(4)
    big = np.asfortranarray(rng.standard_normal((40, 50)))
    before = big.copy()
    left = np.asfortranarray(rng.standard_normal((30, 7)))
    right = np.asfortranarray(rng.standard_normal((20, 7)))
    target = big[5:35, 10:30]  # a view with leading dimension 40
    _blas.gemm(-1.0, left, right, 1.0, target, trans_b=True)
    expected = before.copy()
    expected[5:35, 10:30] -= left @ right.T
    np.testing.assert_allclose(big, expected, rtol=1e-14, atol=1e-13)

    square = big[3:23, 25:45]
    expected = big.copy()
    lower = np.tril(np.ones((20, 20), dtype=bool))
    expected[3:23, 25:45][lower] += (2.0 * right @ right.T)[lower]
    _blas.syrk(2.0, right, 1.0, square)
    np.testing.assert_allclose(big, expected, rtol=1e-14, atol=1e-13)


def test_view_with_strided_rows_is_rejected():
    c_ordered = np.zeros((4, 4))
    with pytest.raises(ValueError, match="not contiguous"):
        _blas.gemm(1.0, c_ordered, c_ordered, 0.0, np.asfortranarray(c_ordered))
    with pytest.raises(TypeError, match="float64"):
        _blas.gemm(1.0, np.zeros((2, 2), np.float32), np.zeros((2, 2)), 0.0,
                   np.zeros((2, 2), order="F"))


# Raw chunk reader ----------------------------------------------------------


def chunked(path, array, chunks, **options):
    with h5py.File(path, "w") as file:
        file.create_dataset("matrix", data=array, chunks=chunks, **options)


@pytest.mark.parametrize("chunks", [(16, 16), (7, 23), (50, 1)])
def test_raw_chunks_match_h5py_on_every_region(tmp_path, chunks):
    array = np.random.default_rng(5).standard_normal((50, 61))
    path = tmp_path / "m.h5"
    chunked(path, array, chunks)
    with h5py.File(path, "r") as file:
        reader = RawChunks.open(file["matrix"])
        assert reader is not None
        try:
            for row0, col0, rows, cols in [(0, 0, 50, 61), (3, 9, 17, 40),
                                           (49, 60, 1, 1), (15, 16, 2, 33)]:
                target = np.empty((rows, cols))
                reader.read(row0, col0, target)
                np.testing.assert_array_equal(
                    target, array[row0 : row0 + rows, col0 : col0 + cols]
                )
        finally:
            reader.close()


def test_raw_chunks_fill_unwritten_chunks(tmp_path):
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as file:
        dataset = file.create_dataset("matrix", (40, 40), "f8", chunks=(10, 10),
                                      fillvalue=2.5)
        dataset[0:10, 0:40] = 1.0
    with h5py.File(path, "r") as file:
        reader = RawChunks.open(file["matrix"])
        target = np.empty((20, 20))
        reader.read(5, 5, target)
        reader.close()
    assert (target[:5] == 1.0).all()
    assert (target[5:] == 2.5).all()


@pytest.mark.parametrize(
    "options",
    [{"compression": "gzip"}, {"shuffle": True}, {"dtype": "f4"}, {"dtype": ">f8"}],
)
def test_raw_chunks_decline_filtered_or_other_types(tmp_path, options):
    path = tmp_path / "m.h5"
    chunked(path, np.eye(8), (4, 4), **options)
    with h5py.File(path, "r") as file:
        assert RawChunks.open(file["matrix"]) is None


def test_contiguous_dataset_is_read_by_h5py(tmp_path):
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("matrix", data=np.eye(8))
    with h5py.File(path, "r") as file:
        assert RawChunks.open(file["matrix"]) is None


@pytest.mark.parametrize("options", [{}, {"compression": "gzip"}])
def test_chunked_input_gives_the_scipy_log_det(tmp_path, options):
    rng = np.random.default_rng(6)
    order = 333
    base = rng.standard_normal((order, order))
    array = base @ base.T / order + np.eye(order)
    path = tmp_path / "m.h5"
    chunked(path, array, (64, 64), **options)
    source, close = input_from_file(path)
    try:
        result = factorize(source, "cholesky", 2, tmp_path / "work")
    finally:
        close()
    expected = 2.0 * np.sum(np.log(np.diagonal(scipy.linalg.cholesky(array))))
    assert abs(result.logabsdet - expected) <= 1e-12 * abs(expected)


def test_raw_chunk_nan_position(tmp_path):
    array = np.eye(30)
    array[17, 4] = np.nan
    path = tmp_path / "m.h5"
    chunked(path, array, (8, 8))
    with h5py.File(path, "r") as file:
        source = MatrixInput(file["matrix"], 30, "test")
        buffer = np.empty(30 * 30)
        with pytest.raises(Exception, match=r"entry \(17, 4\) is nan"):
            source.read_into(BlockGrid.split(30, 1), (0, 0), buffer)
        source.close()


# Step files ----------------------------------------------------------------------


def step_blocks(grid: BlockGrid, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        (i, j): rng.standard_normal(grid.sizes[i] * grid.sizes[j])
        for i in range(grid.num_blocks)
        for j in range(i + 1)
    }


@pytest.mark.parametrize("direct", [True, False])
def test_step_files_round_trip_blocks_of_odd_bytes(tmp_path, direct):
    # Order 103 in 3 blocks: blocks of 35 x 34 entries, 9,520 bytes, which
    # direct I/O pads to 12,288 bytes in the file.
    grid = BlockGrid.split(103, 3)
    slots = [(i, j) for i in range(3) for j in range(i + 1)]
    scratch = ScratchFiles(tmp_path, grid, {1: slots, 2: slots[::-1]}, direct=direct)
    blocks = step_blocks(grid, 0)
    try:
        for step in (1, 2):
            for slot in scratch._offsets[step]:
                buffer = aligned_buffer(np.empty, grid.max_size**2)
                buffer[: blocks[slot].size] = blocks[slot] + step
                assert scratch.write(step, slot, buffer) == blocks[slot].size * 8
        for step in (1, 2):
            for slot in slots:
                buffer = aligned_buffer(np.empty, grid.max_size**2)
                scratch.read(step, slot, buffer)
                np.testing.assert_array_equal(
                    buffer[: blocks[slot].size], blocks[slot] + step
                )
        offsets = list(scratch._offsets[1].values())
        if direct:
            assert scratch.direct
            assert all(offset % ALIGN == 0 for offset in offsets)
            assert scratch.size(1) == sum(-(-b.size * 8 // ALIGN) * ALIGN
                                          for b in blocks.values())
        else:
            assert scratch.size(1) == sum(b.size * 8 for b in blocks.values())
        assert scratch.path(1).stat().st_size == scratch.size(1)
    finally:
        scratch.close()


def test_direct_step_files_need_aligned_buffers(tmp_path):
    grid = BlockGrid.split(64, 2)
    scratch = ScratchFiles(tmp_path, grid, {1: [(1, 1)]}, direct=True)
    assert scratch.direct
    buffer = aligned_buffer(np.empty, 32 * 32 + 1)[1:]
    try:
        with pytest.raises(ValueError, match="aligned to 4096 bytes"):
            scratch.write(1, (1, 1), buffer)
    finally:
        scratch.close()


def test_aligned_buffer_address_and_length():
    for elements in (1, 511, 512, 513, 1875**2):
        buffer = aligned_buffer(np.empty, elements)
        assert buffer.ctypes.data % ALIGN == 0
        assert buffer.size >= elements
        assert (buffer.size * 8) % ALIGN == 0


def test_rejected_o_direct_uses_page_cache(tmp_path, monkeypatch):
    # Some file systems (tmpfs on older kernels, some network file systems)
    # fail an O_DIRECT open with EINVAL. The test folder accepts it, so the
    # open call simulates the rejection.
    import errno
    import os

    from ldbench_ooc import _io

    real_open = os.open

    def rejecting_open(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(_io.os, "open", rejecting_open)
    grid = BlockGrid.split(30, 2)
    scratch = ScratchFiles(tmp_path, grid, {1: [(1, 1)]}, direct=True)
    assert not scratch.direct
    assert scratch.size(1) == 15 * 15 * 8
    buffer = np.arange(15 * 15, dtype=float)
    scratch.write(1, (1, 1), buffer)
    back = np.empty(15 * 15)
    scratch.read(1, (1, 1), back)
    np.testing.assert_array_equal(back, buffer)
    scratch.close()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["trailing-1.bin"]
