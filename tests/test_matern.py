"""Tests of the Matern source against scikit-learn and the 1-D closed form."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from conftest import form_dense
from ldbench_matern import (
    DESIGNS,
    MaternSource,
    coregionalization_matrix,
    design_points,
    ldbench_register_sources,
    matern_correlation,
    sample_points,
)
from ldbench_matern._kernel import log_bessel_k_recurrence
from scipy import special
from sklearn.gaussian_process.kernels import RBF, Matern

from ldbench import ParameterError, Structure


def test_plugin_registers_source():
    registered: list[type] = []
    ldbench_register_sources(registered.append)
    assert registered == [MaternSource]


@pytest.mark.parametrize("nu", [0.5, 1.5, 2.5, 0.8, 3.7])
def test_kernel_matches_sklearn(nu):
    source = MaternSource(n=40, dim=3, nu=nu, length_scale=0.3, variance=2.0, seed=5)
    source.block_bytes = 8 * 40 * 10 * 7  # 7 points per strip
    array = form_dense(source)
    expected = 2.0 * Matern(length_scale=0.3, nu=nu)(sample_points(40, 3, 5))
    np.testing.assert_allclose(array, expected, rtol=1e-12, atol=1e-14)
    assert np.array_equal(array, array.T)
    assert np.array_equal(np.diag(array), np.full(40, 2.0))


def test_infinite_nu_is_squared_exponential():
    source = MaternSource(n=30, nu=math.inf, length_scale=0.2, seed=2)
    expected = RBF(length_scale=0.2)(source.points)
    np.testing.assert_allclose(form_dense(source), expected, rtol=1e-13, atol=1e-15)


def test_correlation_at_zero_distance():
    r = np.array([0.0, 0.0, 1e-300])
    for nu in (0.3, 0.5, 1.5, 2.5, 3.7, 50.0, 400.0, math.inf):
        np.testing.assert_array_equal(matern_correlation(r[:2], nu), [1.0, 1.0])
        assert 0.0 <= matern_correlation(r, nu)[2] <= 1.0


@pytest.mark.parametrize("nu", [80.0, 200.5, 1000.0])
def test_large_nu_no_nan_and_near_squared_exponential(nu):
    r = np.linspace(0.0, 6.0, 301)
    values = matern_correlation(r, nu)
    limit = np.exp(-0.5 * r**2)
    assert np.isfinite(values).all()
    assert values[0] == 1.0
    assert (np.diff(values) <= 0).all()
    # |k_nu - k_inf| = O(1 / nu) for fixed r.
    assert np.max(np.abs(values - limit)) < 20.0 / nu


@pytest.mark.parametrize("nu", [0.3, 1.0, 3.7, 12.25])
def test_bessel_recurrence_matches_scipy(nu):
    z = np.geomspace(1e-3, 50.0, 40)
    expected = np.log(special.kv(nu, z))
    np.testing.assert_allclose(log_bessel_k_recurrence(nu, z), expected, rtol=1e-12)


def test_multi_output_is_kron():
    source = MaternSource(n=15, dim=2, nu=2.5, outputs=3, length_scale=0.4, seed=9)
    source.block_bytes = 8 * 15 * 26 * 4
    b = coregionalization_matrix(3, 9)
    kernel = Matern(length_scale=0.4, nu=2.5)(source.points)
    array = form_dense(source)
    info = source.describe()
    assert info.order == 45
    assert info.block_size == 3
    assert info.samples == 15
    assert info.structure is Structure.SPD
    np.testing.assert_allclose(array, np.kron(kernel, b), rtol=1e-12, atol=1e-14)
    # Sample-major: entry (s*d + a, t*d + c) = k(x_s, x_t) B[a, c].
    assert array[2 * 3 + 1, 4 * 3 + 2] == pytest.approx(
        kernel[2, 4] * b[1, 2], rel=1e-12
    )
    assert np.array_equal(array, array.T)


def test_coregionalization_is_correlation():
    b = coregionalization_matrix(4, 1)
    assert np.array_equal(b, b.T)
    assert np.array_equal(np.diag(b), np.ones(4))
    assert np.linalg.eigvalsh(b).min() > 0
    assert np.array_equal(coregionalization_matrix(1, 1), [[1.0]])
    assert not np.allclose(b, coregionalization_matrix(4, 2))


@pytest.mark.parametrize("sort_points", [True, False])
def test_exponential_1d_logdet_every_order(sort_points):
    source = MaternSource(
        n=60, dim=1, nu=0.5, length_scale=0.05, variance=1.7, sort_points=sort_points
    )
    full = form_dense(source)
    x = source.points[:, 0]
    if sort_points:
        assert (np.diff(x) > 0).all()
    for order in (1, 2, 10, 33, 60):
        info = source.describe(order)
        sign, logabsdet = np.linalg.slogdet(full[:order, :order])
        gaps = np.diff(np.sort(x[:order]))
        expected = order * math.log(1.7) + np.sum(np.log1p(-np.exp(-2 * gaps / 0.05)))
        assert info.sign == 1.0
        assert sign == 1.0
        assert info.logdet == pytest.approx(expected, rel=1e-13)
        assert info.logdet == pytest.approx(logabsdet, rel=1e-10)


def test_exponential_1d_logdet_with_outputs():
    source = MaternSource(n=20, dim=1, nu=0.5, length_scale=0.1, outputs=2, seed=4)
    array = form_dense(source)
    for order in (2, 14, 40):
        _, logabsdet = np.linalg.slogdet(array[:order, :order])
        assert source.describe(order).logdet == pytest.approx(logabsdet, rel=1e-10)


def test_no_logdet_outside_closed_form():
    assert MaternSource(n=10, dim=1, nu=1.5).describe().logdet is None
    assert MaternSource(n=10, dim=2, nu=0.5).describe().logdet is None
    assert MaternSource(n=10, dim=1, nu=0.5, nugget=1e-6).describe().logdet is None


def test_leading_block_is_top_left():
    params = {"n": 30, "dim": 2, "nu": 3.7, "outputs": 2, "nugget": 1e-3, "seed": 3}
    full = form_dense(MaternSource(**params))
    small = MaternSource(**params)
    small.block_bytes = 8 * 12 * 16 * 5
    leading = form_dense(small, 24)
    np.testing.assert_allclose(leading, full[:24, :24], rtol=1e-15, atol=0)
    np.testing.assert_allclose(np.diag(full), np.full(60, 1.0 + 1e-3), rtol=1e-15)


def test_points_prefix_stable_across_n():
    assert np.array_equal(sample_points(50, 2, 8)[:20], sample_points(20, 2, 8))


def test_order_checks():
    source = MaternSource(n=5, outputs=2)
    with pytest.raises(ValueError, match="order 3 is not a multiple of outputs = 2"):
        source.describe(3)
    with pytest.raises(ValueError, match="order 12 is outside 1..10"):
        source.describe(12)


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"nu": 0.0}, "nu = 0.0"),
        ({"nu": -1.5}, "nu = -1.5"),
        ({"length_scale": -0.1}, "length_scale = -0.1"),
        ({"variance": 0.0}, "variance = 0.0"),
        ({"nugget": -1e-3}, "'nugget' = -0.001"),
        ({"sort_points": True, "dim": 2}, "dim = 2"),
        ({"outputs": 0}, "'outputs' = 0"),
        ({"design": "grid"}, "'design'"),
        ({"candidates": 0}, "'candidates' = 0"),
        ({"sort_points": True, "dim": 1, "design": "halton"}, "design = 'halton'"),
    ],
)
def test_bad_parameters_name_value(params, fragment):
    with pytest.raises(ParameterError, match=fragment):
        MaternSource(n=10, **params)


def test_formation_flops():
    source = MaternSource(n=10, dim=2, nu=1.5, outputs=3)
    assert source.formation_flops(30) == 55 * (3 * 2 + 2 + 5 + 9)
    general = MaternSource(n=10, dim=1, nu=0.8)
    assert general.formation_flops(4) == 10 * (3 + 2 + 40)


# --- general nu: closed forms, log-space Bessel, extremes ----------------------


def matern_mpmath(r: float, nu: float) -> float:
    """Matern correlation in 50-digit arithmetic, from the Bessel function."""
    mpmath = pytest.importorskip("mpmath")
    if r == 0:
        return 1.0
    with mpmath.workdps(50):
        z = mpmath.sqrt(2 * mpmath.mpf(nu)) * r
        value = mpmath.mpf(2) ** (1 - nu) / mpmath.gamma(nu) * z**nu
        return float(value * mpmath.besselk(nu, z))


DISTANCES = [0.0, 1e-300, 1e-8, 1e-3, 0.05, 0.3, 1.0, 2.0, 5.0, 10.0, 30.0]


@pytest.mark.parametrize("nu", [0.5, 1.5, 2.5, 3.5, 10.5, 100.5])
def test_half_integer_closed_form(nu):
    r = np.array(DISTANCES)
    expected = np.array([matern_mpmath(x, nu) for x in r])
    values = matern_correlation(r, nu)
    assert np.isfinite(values).all()
    assert values[0] == 1.0
    np.testing.assert_allclose(values, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("nu", [0.3, 0.8, 3.7, 12.25, 50.0, 100.0, 150.0, 200.5])
def test_general_nu_log_space(nu):
    r = np.array(DISTANCES)
    expected = np.array([matern_mpmath(x, nu) for x in r])
    values = matern_correlation(r, nu)
    assert np.isfinite(values).all()
    assert values[0] == 1.0
    np.testing.assert_allclose(values, expected, rtol=1e-11, atol=0)


def test_half_integer_far_distance_no_overflow():
    r = np.array([1e3, 1e5, 1e300])
    for nu in (3.5, 40.5, 100.5):
        values = matern_correlation(r, nu)
        np.testing.assert_array_equal(values, np.zeros(3))


def test_general_nu_matches_sklearn_blockwise():
    source = MaternSource(n=50, dim=2, nu=7.25, length_scale=0.2, seed=11)
    source.block_bytes = 8 * 50 * 10 * 6
    expected = Matern(length_scale=0.2, nu=7.25)(source.points)
    np.testing.assert_allclose(form_dense(source), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.slow
def test_exponential_10k_memdet_closed_form(tmp_path):
    """Form m = 10,000 blockwise into the store; memdet Cholesky with four
    blocks per side matches sum log(1 - exp(-2 Delta_i / l)) to 1e-10."""
    pytest.importorskip("detkit")
    from ldbench_memdet import MemdetSolver

    from ldbench import MatrixHandle, SolveContext
    from ldbench._store import MatrixStore

    source = MaternSource(
        n=10_000, dim=1, nu=0.5, length_scale=0.01, sort_points=True, seed=0
    )
    source.block_bytes = 64 * 2**20  # 839 points per strip, 12 strips
    stored = MatrixStore(tmp_path / "store").ensure(source)
    info = source.describe()
    gaps = np.diff(source.points[:, 0])
    expected = float(np.sum(np.log(-np.expm1(-2.0 * gaps / 0.01))))
    assert info.logdet == pytest.approx(expected, rel=1e-14)
    solver = MemdetSolver(method="cholesky", num_blocks=4)
    handle = MatrixHandle(stored.path, info)
    try:
        estimate = solver.solve(handle, SolveContext(scratch_dir=tmp_path / "scratch"))
    finally:
        handle.close()
    assert estimate.sign == 1.0
    assert abs(estimate.logabsdet - expected) <= 1e-10 * abs(expected)


# --- point designs --------------------------------------------------------------


@pytest.mark.parametrize("design", DESIGNS)
def test_design_points_in_cube_and_seeded(design):
    kwargs = {"n": 80, "dim": 2, "length_scale": 0.3, "design": design}
    points = MaternSource(seed=4, **kwargs).points
    assert points.shape == (80, 2)
    assert ((points >= 0.0) & (points < 1.0)).all()
    assert len(np.unique(points, axis=0)) == 80
    assert np.array_equal(points, MaternSource(seed=4, **kwargs).points)
    assert not np.allclose(points, MaternSource(seed=5, **kwargs).points)


def test_random_design_is_default():
    source = MaternSource(n=30, dim=3, seed=7)
    assert source.params["design"] == "random"
    assert np.array_equal(source.points, sample_points(30, 3, 7))


@pytest.mark.parametrize("design", ["random", "halton", "sobol"])
def test_sequence_designs_prefix_stable(design):
    assert np.array_equal(
        design_points(50, 2, 8, design)[:20], design_points(20, 2, 8, design)
    )


def test_maximin_distances_do_not_grow():
    points = design_points(200, 2, 1, "maximin", candidates=6)
    distance = [
        np.min(np.linalg.norm(points[:k] - points[k], axis=1)) for k in range(1, 200)
    ]
    assert np.all(np.diff(distance) <= 1e-15)


def log_pivot_scatter(source: MaternSource, first: int) -> float:
    """Return the standard deviation of the log Cholesky pivots of k >= first
    about a straight line in log k."""
    pivots = np.diagonal(np.linalg.cholesky(form_dense(source))) ** 2
    k = np.arange(first, source.params["n"] + 1)
    logs = np.log(pivots[k - 1])
    design = np.column_stack([np.ones(k.size), np.log(k)])
    residual = logs - design @ np.linalg.lstsq(design, logs, rcond=None)[0]
    return float(np.std(residual))


def test_maxvar_conditional_variances_do_not_grow():
    """Each maxvar point has the largest conditional variance among the
    candidates, so the Cholesky pivots of K in design order never grow."""
    source = MaternSource(n=150, dim=2, nu=1.5, length_scale=0.3, design="maxvar")
    pivots = np.diagonal(np.linalg.cholesky(form_dense(source))) ** 2
    assert pivots[0] == 1.0
    assert np.all(np.diff(pivots) <= 1e-12)


def test_maxvar_pivots_smoother_than_random():
    """The log pivots are the increments of one output. For random points
    they scatter with the gaps between neighbours."""
    kwargs = {"n": 150, "dim": 2, "nu": 1.5, "length_scale": 0.3}
    assert log_pivot_scatter(MaternSource(design="maxvar", **kwargs), 31) < 0.05
    assert log_pivot_scatter(MaternSource(design="random", **kwargs), 31) > 0.5


def test_maxvar_falls_back_to_distance(caplog):
    """A squared-exponential kernel with a long length scale leaves no
    conditional variance above the floor after a few points. The remaining
    points are then placed by distance and stay distinct."""
    source = MaternSource(n=60, dim=2, nu=math.inf, length_scale=2.0, design="maxvar")
    with caplog.at_level(logging.WARNING, logger="ldbench_matern._model"):
        points = source.points
    assert "placed by distance" in caplog.text
    assert len(np.unique(points, axis=0)) == 60


def test_maxvar_memory_guard():
    source = MaternSource(n=100, design="maxvar", candidates=8)
    assert source.params["candidates"] == 8
    source.design_bytes = 8 * 8 * 100**2 - 1
    with pytest.raises(ParameterError, match="lower candidates or use design"):
        source.validate()


def test_maximin_memory_guard():
    source = MaternSource(n=100, design="maximin", candidates=8)
    source.design_bytes = 8 * 8 * 100 * 3 - 1
    with pytest.raises(ParameterError, match="'maximin' with n = 100 and candidates = 8"):
        source.validate()
    source.design_bytes = 8 * 8 * 100 * 3
    source.validate()
