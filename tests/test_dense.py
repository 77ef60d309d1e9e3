"""Tests of the dense LAPACK solver against closed-form log-determinants."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import write_handle

from ldbench import (
    Estimate,
    MatrixInfo,
    ParameterError,
    SolveContext,
    SolverError,
    Structure,
)
from ldbench_dense import DenseSolver, ldbench_register_solvers
from ldbench_dense._factor import cholesky_logdet
from matrices import kms_matrix, spd_with_spectrum

METHODS = ("cholesky", "ldl", "lu")
RTOL = 1e-10


def solve(handle_factory, array: np.ndarray, method: str, **kwargs) -> Estimate:
    handle = handle_factory(array, **kwargs)
    return DenseSolver(method=method).solve(handle, SolveContext(handle.path.parent))


def test_plugin_registers_solver():
    registered: list[type] = []
    ldbench_register_solvers(registered.append)
    assert registered == [DenseSolver]
    assert DenseSolver.name == "dense"
    assert DenseSolver.stochastic is False


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("scale", "order"),
    [(3.0, 7), (2e-6, 512), (1e3, 1000)],
    ids=["3I-7", "2e-6I-512-underflow", "1e3I-1000-overflow"],
)
def test_scaled_identity_logdet(handle_factory, method, scale, order):
    estimate = solve(handle_factory, scale * np.eye(order), method)
    assert estimate.logabsdet == pytest.approx(order * math.log(scale), rel=RTOL)
    assert estimate.sign == 1.0
    assert estimate.read_order == order


@pytest.mark.parametrize("method", METHODS)
def test_kms_logdet(handle_factory, method):
    order, rho = 200, 0.7
    estimate = solve(handle_factory, kms_matrix(order, rho), method)
    expected = (order - 1) * math.log(1.0 - rho**2)
    assert estimate.logabsdet == pytest.approx(expected, rel=RTOL)
    assert estimate.sign == 1.0


@pytest.mark.parametrize("method", METHODS)
def test_known_spectrum_logdet(handle_factory, method):
    array, eigenvalues = spd_with_spectrum(150, seed=1)
    estimate = solve(handle_factory, array, method)
    assert estimate.logabsdet == pytest.approx(np.sum(np.log(eigenvalues)), rel=RTOL)
    assert estimate.sign == 1.0


def test_lu_negative_determinant(handle_factory):
    order = 60
    rng = np.random.default_rng(2)
    lower = np.eye(order) + 0.1 * np.tril(rng.standard_normal((order, order)), -1)
    diagonal = rng.uniform(0.5, 2.0, order)
    upper = np.diag(diagonal) + 0.1 * np.triu(rng.standard_normal((order, order)), 1)
    array = lower @ upper
    array[[0, order - 1]] = array[[order - 1, 0]]  # one swap flips the sign
    estimate = solve(handle_factory, array, "lu")
    assert estimate.sign == -1.0
    assert estimate.logabsdet == pytest.approx(np.sum(np.log(diagonal)), rel=RTOL)


@pytest.mark.parametrize("method", ["ldl", "lu"])
def test_indefinite_negative_determinant(handle_factory, method):
    array, eigenvalues = spd_with_spectrum(80, seed=3)
    q = np.linalg.eigh(array)[1]
    eigenvalues = np.sort(eigenvalues)
    eigenvalues[0] = -eigenvalues[0]
    indefinite = (q * eigenvalues) @ q.T
    estimate = solve(handle_factory, (indefinite + indefinite.T) / 2.0, method)
    assert estimate.sign == -1.0
    assert estimate.logabsdet == pytest.approx(
        np.sum(np.log(np.abs(eigenvalues))), rel=RTOL
    )


def test_ldl_two_by_two_pivots(handle_factory):
    # Each [[0, 1], [1, 0]] block has determinant -1 and forces a 2x2 pivot.
    pairs = 7
    array = np.kron(np.eye(pairs), np.array([[0.0, 1.0], [1.0, 0.0]]))
    estimate = solve(handle_factory, array, "ldl")
    assert estimate.details["num_2x2_blocks"] == pairs
    assert estimate.logabsdet == 0.0
    assert estimate.sign == -1.0


def test_ldl_pivot_blocks_no_overflow(handle_factory):
    # det [[1e-300, 1e300], [1e300, 1e-300]] is about -1e600, beyond float64.
    block = np.array([[1e-300, 1e300], [1e300, 1e-300]])
    estimate = solve(handle_factory, np.kron(np.eye(3), block), "ldl")
    assert estimate.details["num_2x2_blocks"] == 3
    assert estimate.logabsdet == pytest.approx(6 * 300 * math.log(10), rel=RTOL)
    assert estimate.sign == -1.0


@pytest.mark.parametrize("method", ["ldl", "lu"])
def test_singular_minus_infinity(handle_factory, method):
    # Rank 2, positive semi-definite: eigenvalues 2, 1 and 0.
    array = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    estimate = solve(handle_factory, array, method)
    assert estimate.logabsdet == -math.inf
    assert estimate.sign == 0.0
    assert estimate.to_dict()["logabsdet"] == "-inf"


def test_cholesky_singular_raises(handle_factory):
    array = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(SolverError, match="pivot index 1"):
        solve(handle_factory, array, "cholesky")


def test_cholesky_indefinite_names_pivot(handle_factory):
    with pytest.raises(SolverError) as raised:
        solve(handle_factory, np.array([[1.0, 2.0], [2.0, 1.0]]), "cholesky")
    message = str(raised.value)
    assert "pivot index 1" in message
    assert "'ldl'" in message
    assert "shift" in message


def test_non_finite_entry_raises(handle_factory):
    array = np.eye(4)
    array[2, 1] = np.nan
    with pytest.raises(SolverError, match=r"entry \(2, 1\) is nan"):
        solve(handle_factory, array, "lu")


@pytest.mark.parametrize("method", METHODS)
def test_leading_block_only(tmp_path, method):
    leading, eigenvalues = spd_with_spectrum(40, seed=4)
    full = np.full((64, 64), np.nan)  # NaN outside the block fails any read
    full[:40, :40] = leading
    handle = write_handle(tmp_path / "m.h5", full, order=40)
    estimate = DenseSolver(method=method).solve(handle, SolveContext(tmp_path))
    assert estimate.read_order == 40
    assert estimate.logabsdet == pytest.approx(np.sum(np.log(eigenvalues)), rel=RTOL)
    leading_info = MatrixInfo(order=40, structure=Structure.SPD)
    assert estimate.flops == DenseSolver(method=method).flops(leading_info)


def test_flops_exact():
    info = MatrixInfo(order=1000, structure=Structure.SPD)
    assert DenseSolver(method="cholesky").flops(info) == 1000**3 / 3
    assert DenseSolver(method="ldl").flops(info) == 1000**3 / 3
    assert DenseSolver(method="lu").flops(info) == 2 * 1000**3 / 3


def test_labels_and_structures():
    assert DenseSolver(method="cholesky").label() == "Cholesky"
    assert DenseSolver(method="ldl").label() == "LDL"
    assert DenseSolver(method="lu").label() == "LU"
    assert DenseSolver(method="cholesky").required_structure() is Structure.SPD
    assert DenseSolver(method="ldl").required_structure() is Structure.SYMMETRIC
    assert DenseSolver(method="lu").required_structure() is Structure.GENERAL


def test_unknown_method_rejected():
    with pytest.raises(ParameterError, match="not one of"):
        DenseSolver(method="qr")


@pytest.mark.parametrize("block", [1, 7, 64, 300, 301, 1000])
def test_blocked_cholesky_kms(block):
    order, rho = 301, 0.6
    array = np.asfortranarray(kms_matrix(order, rho))
    logabsdet, sign, details = cholesky_logdet(array, block)
    assert logabsdet == pytest.approx((order - 1) * math.log(1 - rho**2), rel=1e-13)
    assert sign == 1.0
    assert details["blocked"] == block


def test_blocked_cholesky_names_pivot():
    array = kms_matrix(200, 0.5)
    array[150, 150] = -1.0
    with pytest.raises(SolverError, match=r"pivot index 150 \(0-based\)"):
        cholesky_logdet(np.asfortranarray(array), 64)


def test_large_cholesky_goes_blocked(handle_factory, monkeypatch):
    from ldbench import _linalg

    monkeypatch.setattr(_linalg, "LAPACK_CHOLESKY_MAX_ORDER", 100)
    estimate = solve(handle_factory, 2.5 * np.eye(150), "cholesky")
    assert estimate.logabsdet == pytest.approx(150 * math.log(2.5), rel=1e-14)
    assert estimate.details["blocked"] == _linalg.CHOLESKY_BLOCK
    small = solve(handle_factory, 2.5 * np.eye(100), "cholesky")
    assert "blocked" not in small.details


def test_cholesky_rejects_bad_shape_and_block():
    with pytest.raises(ValueError, match=r"shape \(6, 4\)"):
        cholesky_logdet(np.ones((6, 4), order="F"), 2)
    for block in (True, 2.5, "4"):
        with pytest.raises(TypeError, match="must be an int or None"):
            cholesky_logdet(np.asfortranarray(np.eye(4)), block)
    with pytest.raises(ValueError, match="block = 0"):
        cholesky_logdet(np.asfortranarray(np.eye(4)), 0)
