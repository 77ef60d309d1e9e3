"""Tests of the Hutch++ solver against closed forms and the conformance kit."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from ldbench import MatrixHandle, MatrixInfo, ParameterError, SolveContext, SolverError
from ldbench import Structure
from ldbench.testing import CHECKS, run_check
from ldbench_hutchpp import HutchppSolver
from ldbench_hutchpp._bounds import lanczos_flops
from ldbench_hutchpp._chebyshev import (
    apply_polynomial,
    evaluate,
    log_coefficients,
    max_error,
)

ORDER = 64


def spd_matrix(order: int, eigenvalues: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((order, order)))
    array = (q * eigenvalues) @ q.T
    return 0.5 * (array + array.T)


def handle_for(tmp_path: Path, array: np.ndarray, name: str = "m.h5") -> MatrixHandle:
    path = tmp_path / name
    with h5py.File(path, "w") as f:
        f.create_dataset("matrix", data=array)
    info = MatrixInfo(order=array.shape[0], structure=Structure.SPD)
    return MatrixHandle(path, info)


def solve(tmp_path: Path, array: np.ndarray, seed: int = 0, **params):
    handle = handle_for(tmp_path, array, f"m-{seed}.h5")
    context = SolveContext(scratch_dir=tmp_path, seed=seed)
    try:
        return HutchppSolver(**params).solve(handle, context)
    finally:
        handle.close()


def test_chebyshev_log_interpolant_accuracy():
    coefficients = log_coefficients(0.1, 1.0, 40)
    x = np.linspace(0.1, 1.0, 101)
    assert np.max(np.abs(evaluate(coefficients, 0.1, 1.0, x) - np.log(x))) < 1e-9
    assert max_error(coefficients, 0.1, 1.0) < 1e-9
    # A low degree is visibly worse, so the error estimate is not vacuous.
    assert max_error(log_coefficients(0.1, 1.0, 4), 0.1, 1.0) > 1e-3


def test_polynomial_of_matrix_matches_eigendecomposition():
    eigenvalues = np.linspace(0.2, 2.0, 30)
    array = spd_matrix(30, eigenvalues)
    block = np.random.default_rng(1).standard_normal((30, 4))
    coefficients = log_coefficients(0.1, 2.5, 25)
    values, vectors = np.linalg.eigh(array)
    expected = vectors @ (evaluate(coefficients, 0.1, 2.5, values)[:, None]
                          * (vectors.T @ block))
    result = apply_polynomial(array, block, coefficients, 0.1, 2.5)
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-12)


def test_full_sketch_is_exact(tmp_path):
    # With samples = 3m the sketch basis spans the whole space, so only the
    # interpolation error remains.
    eigenvalues = np.geomspace(1.0, 1e-2, ORDER)
    estimate = solve(tmp_path, spd_matrix(ORDER, eigenvalues), samples=3 * ORDER,
                     degree=120)
    exact = float(np.sum(np.log(eigenvalues)))
    assert estimate.logabsdet == pytest.approx(exact, rel=1e-9)
    assert estimate.details["bias_bound"] < 1e-6


def test_identity_multiple(tmp_path):
    estimate = solve(tmp_path, 3.0 * np.eye(ORDER), samples=30)
    # Hutch++ is not exact for c*I: the probe part has a random norm.
    assert estimate.logabsdet == pytest.approx(ORDER * math.log(3.0), rel=0.05)
    assert estimate.sign == 1.0
    assert estimate.details["interval_low"] < 3.0 <= estimate.details["interval_high"]


def test_stderr_matches_spread_over_seeds(tmp_path):
    eigenvalues = np.geomspace(1.0, 1e-2, ORDER)
    array = spd_matrix(ORDER, eigenvalues)
    exact = float(np.sum(np.log(eigenvalues)))
    estimates = [solve(tmp_path, array, seed=seed, samples=30) for seed in range(20)]
    values = np.array([e.logabsdet for e in estimates])
    stderrs = np.array([e.stderr for e in estimates])
    ratio = np.std(values, ddof=1) / np.mean(stderrs)
    assert 0.5 < ratio < 2.0, f"spread/stderr ratio {ratio:.2f}"
    assert abs(np.mean(values) - exact) < 3 * np.std(values, ddof=1) / math.sqrt(20)
    inside = np.mean([lo <= exact <= hi for lo, hi in (e.interval for e in estimates)])
    assert inside >= 0.75


def test_flops_by_hand():
    solver = HutchppSolver(degree=10, samples=9, lanczos_steps=5)
    m, k, d = 100.0, 3.0, 10
    lanczos = sum(2 * m * m + 9 * m + 4 * m * (j + 1) for j in range(5)) + 6 * 25
    expected = (m * m + lanczos + 2 * 11**2 + 3 * d * (2 * m * m * k + 6 * m * k)
                + 4 * m * k * k - 4 * k**3 / 3 + 4 * m * k * k + m * k + 4 * m * k)
    info = MatrixInfo(order=100, structure=Structure.SPD)
    assert solver.flops(info) == pytest.approx(expected, rel=1e-14)
    assert lanczos_flops(100, 5) == pytest.approx(lanczos, rel=1e-14)


def test_given_bounds_skip_lanczos(tmp_path):
    eigenvalues = np.linspace(0.5, 2.0, ORDER)
    info = MatrixInfo(order=ORDER, structure=Structure.SPD)
    with_bounds = HutchppSolver(min_eig=0.4, max_eig=2.1)
    estimated = HutchppSolver()
    difference = estimated.flops(info) - with_bounds.flops(info)
    assert difference == pytest.approx(lanczos_flops(ORDER, 20), rel=1e-12)
    estimate = solve(tmp_path, spd_matrix(ORDER, eigenvalues), min_eig=0.4, max_eig=2.1,
                     samples=3 * ORDER)
    assert "ritz_min" not in estimate.details
    assert estimate.details["interval_low"] == 0.4
    assert estimate.logabsdet == pytest.approx(float(np.sum(np.log(eigenvalues))),
                                               rel=1e-10)


@pytest.mark.parametrize("params, fragment", [
    ({"samples": 10}, "multiple of 3"),
    ({"min_eig": 0.0}, "must be positive"),
    ({"min_eig": 2.0, "max_eig": 1.0}, "smaller than max_eig"),
])
def test_invalid_parameters(params, fragment):
    with pytest.raises(ParameterError, match=fragment):
        HutchppSolver(**params)


def test_too_many_samples_for_order(tmp_path):
    with pytest.raises(ParameterError, match="samples <= 24"):
        solve(tmp_path, np.eye(8), samples=27)


def test_indefinite_matrix_raises(tmp_path):
    eigenvalues = np.linspace(1.0, 0.5, ORDER)
    eigenvalues[0] = -2.0
    with pytest.raises(SolverError, match="not positive definite"):
        solve(tmp_path, spd_matrix(ORDER, eigenvalues))


@pytest.mark.parametrize("check", CHECKS)
def test_conformance(check, tmp_path):
    run_check(HutchppSolver, check, params={"samples": 60}, rtol=0.05, workdir=tmp_path)
