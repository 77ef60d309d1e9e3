"""Tests of the SLQ solver (imate) against closed-form log-determinants."""

from __future__ import annotations

import math

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
from ldbench_slq import SlqSolver, ldbench_register_solvers
from matrices import kms_matrix, spd_with_spectrum

pytest.importorskip("imate")

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


def solve(handle: MatrixHandle, seed: int = 0, **params) -> Estimate:
    context = SolveContext(handle.path.parent, seed=seed)
    return SlqSolver(**params).solve(handle, context)


def test_plugin_registers_solver():
    registered: list[type] = []
    ldbench_register_solvers(registered.append)
    assert registered == [SlqSolver]
    assert SlqSolver.name == "slq"
    assert SlqSolver.stochastic is True
    assert SlqSolver.structures == frozenset({Structure.SPD})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spd_within_three_percent(handle_factory, seed):
    array, eigenvalues = spd_with_spectrum(300, seed=10, low=1.0, high=10.0)
    exact = float(np.sum(np.log(eigenvalues)))
    estimate = solve(handle_factory(array), seed=seed)
    assert abs(estimate.logabsdet - exact) / abs(exact) < 0.03
    assert estimate.sign == 1.0


def test_interval_from_imate_error(handle_factory):
    array, eigenvalues = spd_with_spectrum(300, seed=11, low=1.0, high=10.0)
    exact = float(np.sum(np.log(eigenvalues)))
    estimate = solve(handle_factory(array), seed=3)
    details = estimate.details
    assert details["num_samples_used"] == 20
    assert details["num_outliers"] == 0

    # imate's half-width is z * sd / sqrt(k) at its confidence level (0.95).
    assert details["imate_confidence_level"] == 0.95
    assert estimate.stderr == pytest.approx(
        details["imate_absolute_error"] / Z_95, rel=1e-12
    )
    assert estimate.stderr == pytest.approx(
        details["samples_std"] / math.sqrt(20), rel=1e-9
    )
    low, high = estimate.interval
    assert high - low == pytest.approx(2 * Z_95 * estimate.stderr, rel=1e-12)
    assert (low + high) / 2 == pytest.approx(estimate.logabsdet, rel=1e-12)
    assert 0 < high - low < 0.1 * abs(exact)
    assert details["samples_mean"] == estimate.logabsdet
    assert details["samples_min"] <= estimate.logabsdet <= details["samples_max"]


def test_kms_within_four_standard_errors(handle_factory):
    order, rho = 300, 0.5
    exact = (order - 1) * math.log(1.0 - rho**2)
    handle = handle_factory(kms_matrix(order, rho))
    for seed in range(3):
        estimate = solve(handle, seed=seed)
        assert abs(estimate.logabsdet - exact) <= 4 * estimate.stderr


@pytest.mark.parametrize(
    ("scale", "order"),
    [(2e-6, 512), (1e3, 1000)],
    ids=["2e-6I-512-underflow", "1e3I-1000-overflow"],
)
def test_scaled_identity_exact(handle_factory, scale, order):
    # c I has the single eigenvalue c, so every probe gives m ln c exactly.
    estimate = solve(handle_factory(scale * np.eye(order)), lanczos_degree=5, samples=4)
    assert estimate.logabsdet == pytest.approx(order * math.log(scale), rel=1e-10)
    assert estimate.stderr == pytest.approx(0.0, abs=1e-9 * order)


def test_same_seed_reproduces(handle_factory):
    array, _ = spd_with_spectrum(200, seed=12, low=1.0, high=10.0)
    handle = handle_factory(array)
    first = solve(handle, seed=42)
    second = solve(handle, seed=42)
    assert first.logabsdet == second.logabsdet
    assert first.stderr == second.stderr


def test_different_seeds_differ(handle_factory):
    array, _ = spd_with_spectrum(200, seed=12, low=1.0, high=10.0)
    handle = handle_factory(array)
    assert solve(handle, seed=1).logabsdet != solve(handle, seed=2).logabsdet


def test_indefinite_raises(handle_factory):
    array = np.diag([2.0, 1.0, -1.0, 3.0])
    with pytest.raises(SolverError, match="not positive definite"):
        solve(handle_factory(array), lanczos_degree=4, samples=4)


def test_leading_block_only(tmp_path):
    full = np.full((70, 70), np.nan)  # NaN outside the block spoils any read
    full[:50, :50] = 4.0 * np.eye(50)
    handle = write_handle(tmp_path / "m.h5", full, order=50)
    estimate = solve(handle, lanczos_degree=5, samples=4)
    assert estimate.read_order == 50
    assert estimate.logabsdet == pytest.approx(50 * math.log(4.0), rel=1e-10)


def test_flops_exact():
    info = MatrixInfo(order=1000, structure=Structure.SPD)
    solver = SlqSolver(lanczos_degree=100, samples=104)
    assert solver.flops(info) == 2 * (1000**2 * 100 + 1000 * 100**2) * 104
    default = SlqSolver()
    assert default.flops(info) == 2 * (1000**2 * 30 + 1000 * 30**2) * 20


def test_labels():
    assert SlqSolver(lanczos_degree=100, samples=104).label() == "l=100, s=104"
    assert SlqSolver(num_threads=4).label() == "l=30, s=20, threads=4"


def test_single_sample_rejected():
    with pytest.raises(ParameterError, match="minimum"):
        SlqSolver(samples=1)
