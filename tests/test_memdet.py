"""Tests of the memdet solver (detkit) against closed-form log-determinants."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import numpy as np
import pytest
from conftest import write_handle

from ldbench import (
    Estimate,
    MatrixHandle,
    MatrixInfo,
    ParameterError,
    SolveContext,
    SolverError,
    Structure,
)
from ldbench_memdet import MemdetSolver, ldbench_register_solvers
from matrices import kms_matrix, spd_with_spectrum

pytest.importorskip("detkit")

METHODS = ("cholesky", "ldl", "lu")
BLOCKS = (1, 2, 4)
RTOL = 1e-10


class RecordingHandle(MatrixHandle):
    """MatrixHandle that records the shape of every block read through it."""

    def __init__(self, handle: MatrixHandle) -> None:
        super().__init__(handle.path, handle.info, handle.order)
        self.shapes: list[tuple[int, int]] = []

    def block(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        self.shapes.append((row1 - row0, col1 - col0))
        return super().block(row0, row1, col0, col1)


def solve(handle: MatrixHandle, scratch: Path, **params) -> Estimate:
    return MemdetSolver(**params).solve(handle, SolveContext(scratch))


def test_plugin_registers_solver():
    registered: list[type] = []
    ldbench_register_solvers(registered.append)
    assert registered == [MemdetSolver]
    assert MemdetSolver.name == "memdet"
    assert MemdetSolver.requires == ("detkit",)


@pytest.mark.parametrize("num_blocks", BLOCKS)
@pytest.mark.parametrize("method", METHODS)
def test_known_spectrum_logdet(handle_factory, tmp_path, method, num_blocks):
    # 101 is not divisible by 2 or 4, so the last block row is smaller.
    array, eigenvalues = spd_with_spectrum(101, seed=1)
    handle = handle_factory(array)
    estimate = solve(handle, tmp_path, method=method, num_blocks=num_blocks)
    assert estimate.logabsdet == pytest.approx(np.sum(np.log(eigenvalues)), rel=RTOL)
    assert estimate.sign == 1.0
    assert estimate.details["num_blocks"] == num_blocks


@pytest.mark.parametrize("num_blocks", BLOCKS)
@pytest.mark.parametrize("method", METHODS)
def test_kms_logdet(handle_factory, tmp_path, method, num_blocks):
    order, rho = 203, 0.7
    handle = handle_factory(kms_matrix(order, rho))
    estimate = solve(handle, tmp_path, method=method, num_blocks=num_blocks)
    expected = (order - 1) * math.log(1.0 - rho**2)
    assert estimate.logabsdet == pytest.approx(expected, rel=RTOL)
    assert estimate.sign == 1.0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("scale", "order", "num_blocks"),
    [(2e-6, 512, 4), (1e3, 1000, 4), (1e3, 1000, 1)],
    ids=["2e-6I-512-underflow", "1e3I-1000-overflow", "1e3I-1000-one-block"],
)
def test_scaled_identity_logdet(
    handle_factory, tmp_path, method, scale, order, num_blocks
):
    handle = handle_factory(scale * np.eye(order))
    estimate = solve(handle, tmp_path, method=method, num_blocks=num_blocks)
    assert estimate.logabsdet == pytest.approx(order * math.log(scale), rel=RTOL)
    assert estimate.sign == 1.0


@pytest.mark.parametrize("num_blocks", (1, 2, 3))
def test_lu_negative_determinant(handle_factory, tmp_path, num_blocks):
    order = 61
    rng = np.random.default_rng(2)
    lower = np.eye(order) + 0.1 * np.tril(rng.standard_normal((order, order)), -1)
    diagonal = rng.uniform(0.5, 2.0, order)
    upper = np.diag(diagonal) + 0.1 * np.triu(rng.standard_normal((order, order)), 1)
    array = lower @ upper
    array[[0, order - 1]] = array[[order - 1, 0]]  # one swap flips the sign
    estimate = solve(
        handle_factory(array), tmp_path, method="lu", num_blocks=num_blocks
    )
    assert estimate.sign == -1.0
    assert estimate.logabsdet == pytest.approx(np.sum(np.log(diagonal)), rel=RTOL)


@pytest.mark.parametrize("method", ["ldl", "lu"])
def test_singular_one_block_minus_infinity(handle_factory, tmp_path, method):
    array = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    estimate = solve(handle_factory(array), tmp_path, method=method, num_blocks=1)
    assert estimate.logabsdet == -math.inf
    assert estimate.sign == 0.0


def test_singular_with_blocks_raises(handle_factory, tmp_path):
    array = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(SolverError, match="only inside diagonal blocks"):
        solve(handle_factory(array), tmp_path, method="lu", num_blocks=2)


@pytest.mark.parametrize("num_blocks", (1, 2))
def test_cholesky_indefinite_names_pivot(handle_factory, tmp_path, num_blocks):
    array = np.kron(np.eye(2), np.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(SolverError) as raised:
        solve(handle_factory(array), tmp_path, method="cholesky", num_blocks=num_blocks)
    message = str(raised.value)
    assert "pivot index 1" in message
    assert "'ldl'" in message


def test_ldl_zero_pivot_block_raises(handle_factory, tmp_path):
    # Bunch-Kaufman takes [[0, 1], [1, 0]] as one 2x2 pivot, which detkit
    # 0.12.3 turns into a NaN log-determinant.
    array = np.kron(np.eye(4), np.array([[0.0, 1.0], [1.0, 0.0]]))
    with pytest.raises(SolverError, match="method 'lu'"):
        solve(handle_factory(array), tmp_path, method="ldl", num_blocks=1)


def test_pivot_across_blocks_raises(handle_factory, tmp_path):
    # Nonsingular, but the 25th row of the first block has a zero pivot that
    # only a row from the second block could replace.
    array = np.kron(np.eye(50), np.array([[0.0, 1.0], [1.0, 0.0]]))
    handle = handle_factory(array)
    assert solve(handle, tmp_path, method="lu", num_blocks=1).logabsdet == 0.0
    with pytest.raises(SolverError, match="pivots only inside diagonal blocks"):
        solve(handle, tmp_path, method="lu", num_blocks=4)


@pytest.mark.parametrize("parallel_io", [None, "dask"])
def test_non_finite_entry_raises(handle_factory, tmp_path, parallel_io):
    array = np.eye(7)
    array[5, 1] = np.inf
    with pytest.raises(SolverError, match=r"entry \(5, 1\) is inf"):
        solve(
            handle_factory(array),
            tmp_path,
            method="lu",
            num_blocks=3,
            parallel_io=parallel_io,
        )


@pytest.mark.parametrize("num_blocks", BLOCKS)
@pytest.mark.parametrize("method", METHODS)
def test_leading_block_only(tmp_path, method, num_blocks):
    leading, eigenvalues = spd_with_spectrum(57, seed=4)
    full = np.full((80, 80), np.nan)  # NaN outside the block fails any read
    full[:57, :57] = leading
    handle = write_handle(tmp_path / "m.h5", full, order=57)
    estimate = solve(handle, tmp_path / "scratch", method=method, num_blocks=num_blocks)
    assert estimate.read_order == 57
    assert estimate.logabsdet == pytest.approx(np.sum(np.log(eigenvalues)), rel=RTOL)


def test_reads_blocks_not_whole_matrix(tmp_path):
    array, eigenvalues = spd_with_spectrum(101, seed=5)
    handle = RecordingHandle(write_handle(tmp_path / "m.h5", array))
    scratch = tmp_path / "scratch"
    estimate = solve(handle, scratch, method="ldl", num_blocks=4)
    assert estimate.logabsdet == pytest.approx(np.sum(np.log(eigenvalues)), rel=RTOL)
    assert handle.shapes
    assert max(rows * cols for rows, cols in handle.shapes) <= 26 * 26
    details = estimate.details
    assert details["block_shape"] == [26, 26]
    assert details["num_block_loads"] > 0
    assert details["num_block_stores"] > 0
    assert details["scratch_nbytes"] > 0
    assert list(scratch.iterdir()) == []  # memdet removed its scratch files


@pytest.mark.parametrize("parallel_io", ["multiproc", "dask"])
def test_parallel_io(handle_factory, tmp_path, parallel_io):
    array, eigenvalues = spd_with_spectrum(75, seed=6)
    estimate = solve(
        handle_factory(array),
        tmp_path,
        method="cholesky",
        num_blocks=3,
        parallel_io=parallel_io,
    )
    assert estimate.logabsdet == pytest.approx(np.sum(np.log(eigenvalues)), rel=RTOL)
    assert estimate.details["parallel_io"] == parallel_io


def test_max_mem_sets_num_blocks(handle_factory, tmp_path):
    # r = 101 * sqrt(8 / 16384) = 2.23, so detkit uses ceil(2 r) = 5 blocks.
    array, eigenvalues = spd_with_spectrum(101, seed=7)
    solver = MemdetSolver(method="lu", num_blocks=1, max_mem="16KB")
    estimate = solver.solve(handle_factory(array), SolveContext(tmp_path))
    assert estimate.details["num_blocks"] == 5
    assert estimate.details["max_mem"] == 16 * 1024
    assert estimate.logabsdet == pytest.approx(np.sum(np.log(eigenvalues)), rel=RTOL)
    assert solver.label() == "LU, max_mem=16KB"


@pytest.mark.parametrize("text", ["64", "lots", "-1MB", "0MB", "12 XB"])
def test_invalid_max_mem_rejected(text):
    with pytest.raises(ParameterError, match="max_mem"):
        MemdetSolver(max_mem=text)


def test_too_many_blocks_rejected(handle_factory, tmp_path):
    with pytest.raises(ParameterError, match="num_blocks <= 3"):
        solve(handle_factory(np.eye(5)), tmp_path, num_blocks=4)


def test_signal_handlers_restored(handle_factory, tmp_path):
    solve(handle_factory(np.eye(4)), tmp_path, num_blocks=1)
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        assert not getattr(handler, "__module__", "").startswith("detkit")


def test_flops_independent_of_blocks():
    info = MatrixInfo(order=1000, structure=Structure.SPD)
    for num_blocks in (1, 4, 32):
        assert MemdetSolver(method="cholesky", num_blocks=num_blocks).flops(info) == (
            1000**3 / 3
        )
        assert MemdetSolver(method="ldl", num_blocks=num_blocks).flops(info) == (
            1000**3 / 3
        )
        assert MemdetSolver(method="lu", num_blocks=num_blocks).flops(info) == (
            2 * 1000**3 / 3
        )


def test_labels_and_structures():
    assert MemdetSolver(method="ldl", num_blocks=4).label() == "LDL, n_b=4"
    assert MemdetSolver(method="cholesky", num_blocks=32).label() == "Cholesky, n_b=32"
    assert (
        MemdetSolver(method="lu", num_blocks=2, parallel_io="dask").label()
        == "LU, n_b=2, io=dask"
    )
    assert MemdetSolver(method="cholesky").required_structure() is Structure.SPD
    assert MemdetSolver(method="ldl").required_structure() is Structure.SYMMETRIC
    assert MemdetSolver(method="lu").required_structure() is Structure.GENERAL
