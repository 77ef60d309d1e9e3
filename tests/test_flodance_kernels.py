"""FLODANCE on the kernels it is benchmarked on: an NTK and Matern kernels.

Each test forms only the leading block the solver reads and compares the
estimate with an exact float64 log-determinant from a dense Cholesky
factorisation. The bounds sit just above the measured errors of these
matrices; docs/flodance.md has the measurements at full size.
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.linalg
from conftest import form_dense
from ldbench_flodance import FlodanceSolver
from ldbench_matern import MaternSource, matern_correlation

from ldbench import MatrixHandle, MatrixSource, SolveContext

#: Settings for NTKs with P >= 10 m (see "Settings for NTKs" in the docs).
NTK_SETTINGS = {"q": 2, "select_q": True, "weight_power": 2.0}

#: Settings for Matern kernels on maxvar points with length scale 0.3 (see
#: "Settings for Matérn kernels" in the docs).
MATERN_SETTINGS = {"n0": 20, "weight_power": -1.0}


def cholesky_logdet(array: np.ndarray) -> float:
    factor = scipy.linalg.cholesky(array, lower=True, check_finite=False)
    return float(2.0 * np.sum(np.log(np.diagonal(factor))))


def leading_handle(source: MatrixSource, order: int, path: Path) -> MatrixHandle:
    """Store the leading block of ``order`` and return a handle to it, as the
    runner does for a solver that reads only that block."""
    with h5py.File(path, "w") as f:
        f.create_dataset("matrix", data=form_dense(source, order))
    return MatrixHandle(path, source.describe(), order)


def flodance(source: MatrixSource, tmp_path: Path, **params):
    solver = FlodanceSolver(**params)
    order = solver.leading_order(source.describe())
    handle = leading_handle(source, order, tmp_path / f"lead{order}.h5")
    try:
        return solver.solve(handle, SolveContext(scratch_dir=tmp_path))
    finally:
        handle.close()


def relative_error(estimate, exact: float) -> float:
    return abs(estimate.logabsdet - exact) / abs(exact)


def contains(estimate, exact: float) -> bool:
    low, high = estimate.interval
    return low <= exact <= high


# --- neural tangent kernel --------------------------------------------------


def test_ntk_settings_on_wide_mlp(tmp_path):
    """MLP 64-128-128-10 on 250 digits: P = 26,122 >= 10 m = 25,000.

    With the NTK settings the estimates were 1.14% (n/4) and 1.57% (n/10)
    off. The defaults (q = 0) gave 0.58% and 10.3%: at n/10 the law is
    fitted on 20 increments and misses how they steepen later.
    """
    pytest.importorskip("torch")
    from ldbench_ntk import NTKSource

    source = NTKSource(model="mlp", width=128, depth=2, dataset="digits", n=250)
    exact = cholesky_logdet(form_dense(source))
    for fraction, limit in ((0.25, 0.013), (0.1, 0.018)):
        estimate = flodance(source, tmp_path, fraction=fraction, **NTK_SETTINGS)
        assert relative_error(estimate, exact) < limit, fraction
        assert contains(estimate, exact), fraction
    plain = flodance(source, tmp_path, fraction=0.1)
    assert relative_error(plain, exact) > 0.05


# --- Matern kernels and their point design -----------------------------------


def matern(design: str, n: int) -> MaternSource:
    return MaternSource(
        n=n, dim=2, nu=1.5, length_scale=0.3, outputs=10, seed=0, design=design
    )


def matern_logdet(source: MaternSource) -> float:
    """Exact log-det of ``kron(K, B)``: ``d log det K + n log det B``, from
    dense Cholesky factorisations of the n x n kernel K and of B."""
    p = source.params
    points = source.points
    distances = np.sqrt(np.sum((points[:, None, :] - points[None, :, :]) ** 2, -1))
    kernel = p["variance"] * matern_correlation(distances / p["length_scale"], p["nu"])
    d = p["outputs"]
    return d * cholesky_logdet(kernel) + p["n"] * cholesky_logdet(
        source.coregionalization()
    )


def test_kronecker_logdet_matches_full_cholesky():
    source = matern("maxvar", 60)
    assert matern_logdet(source) == pytest.approx(
        cholesky_logdet(form_dense(source)), rel=1e-12
    )


def test_maxvar_design_makes_matern_extrapolate(tmp_path):
    """n = 1,000 points, 10 outputs (m = 10,000), nu = 1.5, length scale 0.3.

    With maxvar points the estimates were 1.51% (n/10) and 0.14% (n/4) off,
    with 95% half-widths of 7% and 2.6%. With random points they were 8.2%
    and 0.81% off with half-widths of 71% and 34%: the increments scatter
    with the distances between neighbouring points.
    """
    errors = {}
    for design in ("maxvar", "random"):
        source = matern(design, 1000)
        exact = matern_logdet(source)
        for fraction in (0.1, 0.25):
            estimate = flodance(source, tmp_path, fraction=fraction)
            assert contains(estimate, exact), (design, fraction)
            half_width = (estimate.interval[1] - estimate.logabsdet) / abs(exact)
            errors[design, fraction] = (relative_error(estimate, exact), half_width)
    assert errors["maxvar", 0.1][0] < 0.016
    assert errors["maxvar", 0.25][0] < 0.002
    assert errors["maxvar", 0.1][1] < 0.08
    assert errors["maxvar", 0.25][1] < 0.03
    assert errors["random", 0.1][0] > 0.05
    assert errors["random", 0.1][1] > 0.5
    assert errors["random", 0.25][1] > 0.3
    assert math.isfinite(errors["random", 0.25][0])


def test_matern_settings_on_maxvar_points(tmp_path):
    """n = 3,000 maxvar points, 10 outputs (m = 30,000), nu = 1.5, length
    scale 0.3.

    At n_s = n/10 the defaults were 0.61% off and the Matern settings 0.25%.
    """
    source = MaternSource(
        n=3000, dim=2, nu=1.5, length_scale=0.3, outputs=10, seed=8,
        design="maxvar",
    )
    exact = matern_logdet(source)
    tuned = flodance(source, tmp_path, fraction=0.1, **MATERN_SETTINGS)
    assert relative_error(tuned, exact) < 0.004
    assert contains(tuned, exact)
    plain = flodance(source, tmp_path, fraction=0.1)
    assert relative_error(plain, exact) > 0.005
