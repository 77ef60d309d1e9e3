"""Tests of the FLODANCE solver plugin against closed-form log-determinants."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from ldbench_flodance import (
    FitSettings,
    FlodanceSolver,
    fit_scaling_law,
    laurent_sums,
    ldbench_register_solvers,
)
from scipy.special import gammaln

from ldbench import (
    MatrixInfo,
    ParameterError,
    SolveContext,
    SolverError,
    Structure,
)


def random_spd(m: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, m))
    return a @ a.T / m + 0.5 * np.eye(m)


def law_increments(ks: np.ndarray, b: float, nu: list[float]) -> np.ndarray:
    """Return ``b - sum_j nu_j * log(k) / k**j`` at ``ks``."""
    k = ks.astype(float)
    return b - sum(v * np.log(k) / k**j for j, v in enumerate(nu))


def matrix_with_increments(increments: np.ndarray, d: int, seed: int) -> np.ndarray:
    """Return a dense SPD ``F D F^T`` whose k-th leading Schur complement of
    d rows has log-determinant ``increments[k-1]``.

    F is unit lower triangular, so ``log det K_k`` is the sum of the first k
    entries of ``increments`` exactly.
    """
    rng = np.random.default_rng(seed)
    n = increments.size
    m = n * d
    diagonal = np.empty(m)
    for k, total in enumerate(increments):
        logs = rng.normal(size=d)
        logs += (total - logs.sum()) / d
        diagonal[k * d : (k + 1) * d] = np.exp(logs)
    lower = np.tril(rng.standard_normal((m, m)), -1) * (0.3 / math.sqrt(m))
    factor = np.eye(m) + lower
    return (factor * diagonal) @ factor.T


def solve(solver: FlodanceSolver, handle, tmp_path):
    return solver.solve(handle, SolveContext(scratch_dir=tmp_path))


def spd_info(order: int, block_size: int) -> MatrixInfo:
    return MatrixInfo(order=order, structure=Structure.SPD, block_size=block_size)


# --- leading log-determinants ------------------------------------------------


@pytest.mark.parametrize("method", ["cholesky", "ldl"])
def test_curve_matches_slogdet(handle_factory, tmp_path, method):
    d, n = 3, 40
    array = random_spd(n * d, seed=1)
    solver = FlodanceSolver(n_s=30, method=method)
    handle = handle_factory(array, structure=Structure.SPD, block_size=d)
    estimate = solve(solver, handle, tmp_path)
    curve = estimate.details["curve"]
    assert curve["k"][:30] == list(range(1, 31))
    for k in (1, 2, 7, 15, 29, 30):
        sign, expected = np.linalg.slogdet(array[: k * d, : k * d])
        assert sign == 1.0
        assert abs(curve["logdet"][k - 1] - expected) < 1e-10


def test_exact_when_n_s_equals_n(handle_factory, tmp_path):
    d, n = 4, 25
    array = random_spd(n * d, seed=2)
    _, expected = np.linalg.slogdet(array)
    for params in ({"n_s": n}, {"fraction": 1.0}):
        handle = handle_factory(array, structure=Structure.SPD, block_size=d)
        estimate = solve(FlodanceSolver(**params), handle, tmp_path)
        assert abs(estimate.logabsdet - expected) < 1e-10
        assert estimate.sign == 1.0
        assert estimate.stderr == 0.0
        assert estimate.read_order == n * d
        assert estimate.details["exact"] is True
        assert estimate.flops == pytest.approx((n * d) ** 3 / 3)


# --- extrapolation on matrices that follow the law ---------------------------


@pytest.mark.parametrize("d", [1, 5])
def test_extrapolation_exact_for_exact_law(handle_factory, tmp_path, d):
    n, b, nu = 200, 1.5, 0.8
    increments = law_increments(np.arange(1, n + 1), b, [nu])
    array = matrix_with_increments(increments, d, seed=3)
    expected = n * b - nu * gammaln(n + 1)
    handle = handle_factory(array, structure=Structure.SPD, block_size=d)
    estimate = solve(FlodanceSolver(n_s=40, n0=5), handle, tmp_path)
    assert abs(estimate.logabsdet - expected) < 1e-8
    assert estimate.read_order == 40 * d
    assert estimate.stderr is not None and estimate.stderr < 1e-6
    low, high = estimate.interval
    assert (low + high) / 2 == pytest.approx(estimate.logabsdet, abs=1e-9)
    coefficients = estimate.details["coefficients"]
    assert abs(coefficients["b"] - b) < 1e-9
    assert abs(coefficients["nu"][0] - nu) < 1e-9
    assert abs(coefficients["a"]) < 1e-8


def test_kms_times_identity_has_nu_zero(handle_factory, tmp_path):
    # A Kac-Murdock-Szego matrix rho**|i-j| of k rows has determinant
    # (1 - rho**2)**(k-1). Its Kronecker product with c*I_d follows the law
    # with nu = 0.
    n, d, rho, c = 120, 2, 0.6, 3.0
    index = np.arange(n)
    kms = rho ** np.abs(index[:, None] - index[None, :])
    array = np.kron(kms, c * np.eye(d))
    expected = n * d * math.log(c) + d * (n - 1) * math.log(1 - rho**2)
    handle = handle_factory(array, structure=Structure.SPD, block_size=d)
    estimate = solve(FlodanceSolver(n_s=20, q=1, ridge=0.0), handle, tmp_path)
    assert abs(estimate.logabsdet - expected) < 1e-8
    slope = d * (math.log(c) + math.log(1 - rho**2))
    assert abs(estimate.details["coefficients"]["b"] - slope) < 1e-9
    assert max(abs(v) for v in estimate.details["coefficients"]["nu"]) < 1e-8


def test_fit_recovers_laurent_exponents():
    n_s, n = 300, 2000
    a, b, nu = 2.0, -0.7, [1.1, 0.6, -0.4]
    sums = laurent_sums(n, q=2)
    ks = np.arange(1, n + 1)
    logdets = a + b * ks - sum(v * sums[j] for j, v in enumerate(nu))
    fit = fit_scaling_law(logdets[:n_s], n0=1, n=n, q=2)
    assert fit.a == pytest.approx(a, rel=1e-8)
    assert fit.b == pytest.approx(b, rel=1e-8)
    for found, true in zip(fit.nu, nu):
        assert found == pytest.approx(true, rel=1e-6)
    assert fit.logdet == pytest.approx(logdets[-1], rel=1e-10)


def test_solver_recovers_laurent_exponents(handle_factory, tmp_path):
    n, d, b, nu = 150, 2, 0.5, [0.9, 0.8, 0.5]
    increments = law_increments(np.arange(1, n + 1), b, nu)
    array = matrix_with_increments(increments, d, seed=4)
    expected = float(np.sum(increments))
    handle = handle_factory(array, structure=Structure.SPD, block_size=d)
    estimate = solve(FlodanceSolver(n_s=60, n0=2, q=2, ridge=0.0), handle, tmp_path)
    found = estimate.details["coefficients"]["nu"]
    for j, true in enumerate(nu):
        assert abs(found[j] - true) < 1e-6
    assert abs(estimate.logabsdet - expected) < 1e-6


def test_stderr_reflects_increment_noise():
    # l_k is the law plus a random walk of known step sigma, so the fitted
    # sigma and the z-scores of the extrapolation error should match it.
    rng = np.random.default_rng(5)
    n_s, n, sigma = 100, 400, 0.5
    increments = law_increments(np.arange(1, n + 1), 1.0, [0.5])
    z_scores = []
    covered = []
    noise_only = FitSettings(misfit=False)
    for _ in range(200):
        logdets = np.cumsum(increments + sigma * rng.standard_normal(n))
        fit = fit_scaling_law(logdets[:n_s], n0=5, n=n, q=0, settings=noise_only)
        assert fit.sigma == pytest.approx(sigma, rel=0.3)
        z_scores.append((fit.logdet - logdets[-1]) / fit.stderr)
        # The default interval adds the held-out misfit, so it is wider.
        honest = fit_scaling_law(logdets[:n_s], n0=5, n=n, q=0)
        assert honest.stderr >= fit.stderr
        low, high = honest.interval
        covered.append(low <= logdets[-1] <= high)
    assert 0.8 < np.std(z_scores) < 1.2
    assert np.mean(np.abs(z_scores) < 1.96) > 0.88
    assert np.mean(covered) >= 0.95


# --- reading only the leading block ------------------------------------------


def test_reads_only_leading_block(handle_factory, tmp_path):
    n, d, n_s = 50, 3, 12
    increments = law_increments(np.arange(1, n + 1), 1.0, [0.5])
    array = matrix_with_increments(increments, d, seed=6)
    expected = float(np.sum(increments))
    poisoned = array.copy()
    m_s = n_s * d
    poisoned[m_s:, :] = np.nan
    poisoned[:, m_s:] = np.nan
    solver = FlodanceSolver(n_s=n_s, n0=2)
    info = spd_info(n * d, d)
    assert solver.leading_order(info) == m_s
    for order in (m_s, n * d):
        handle = handle_factory(
            poisoned, structure=Structure.SPD, block_size=d, order=order
        )
        estimate = solve(solver, handle, tmp_path)
        assert estimate.read_order == m_s
        assert abs(estimate.logabsdet - expected) < 1e-8


def test_leading_order_respects_block_size():
    for d in (1, 6, 10):
        info = spd_info(100 * d, d)
        assert FlodanceSolver(n_s=25).leading_order(info) == 25 * d
        assert FlodanceSolver(fraction=0.25).leading_order(info) == 25 * d
        assert FlodanceSolver(n_s=100).leading_order(info) == 100 * d


def test_flops_count_leading_block_only():
    info = spd_info(10_000, 10)
    flops = FlodanceSolver(n_s=100).flops(info)
    assert flops == pytest.approx(1000**3 / 3, rel=1e-3)
    assert flops > 1000**3 / 3


# --- parameters --------------------------------------------------------------


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({}, "'n_s'"),
        ({"n_s": 10, "fraction": 0.5}, "n_s=10"),
        ({"fraction": 0.0}, "fraction=0.0"),
        ({"fraction": 1.5}, "fraction=1.5"),
        ({"fraction": -0.2}, "fraction=-0.2"),
        ({"n_s": 10, "q": -1}, "-1"),
        ({"n_s": 5, "n0": 3, "q": 1}, "n_s=5"),
        ({"n_s": 10, "method": "lu"}, "'lu'"),
        ({"n_s": 10, "nq": 1}, "'nq'"),
        ({"n_s": 10, "budget_flops": 1e9}, "budget_flops"),
        ({"n_s": 10, "level": 1.0}, "level=1.0"),
        ({"n_s": 10, "singular": "ignore"}, "'ignore'"),
    ],
)
def test_invalid_parameters_named(params, fragment):
    with pytest.raises(ParameterError) as raised:
        FlodanceSolver(**params)
    assert fragment in str(raised.value)


def test_n_s_above_samples_rejected():
    info = spd_info(300, 3)
    with pytest.raises(ParameterError) as raised:
        FlodanceSolver(n_s=101).leading_order(info)
    assert "n_s=101" in str(raised.value)
    assert "n=100" in str(raised.value)


def test_window_too_short_at_plan_time():
    info = spd_info(100, 1)
    with pytest.raises(ParameterError) as raised:
        FlodanceSolver(fraction=0.05, n0=3, q=1).leading_order(info)
    assert "n_s=5" in str(raised.value)
    with pytest.raises(ParameterError) as raised:
        FlodanceSolver(fraction=0.001).leading_order(info)
    assert "fraction=0.001" in str(raised.value)


def test_default_n0_keeps_valid_window():
    for n_s in (4, 5, 10, 100, 1000):
        solver = FlodanceSolver(n_s=n_s, q=1)
        _, n0 = solver.sample_plan(spd_info(10 * n_s, 1))
        assert 1 <= n0 <= n_s - 3


def test_label_and_structure():
    assert FlodanceSolver(n_s=500).label() == "n_s=500, q=0"
    assert FlodanceSolver(fraction=0.25, q=2).label() == "fraction=0.25, q=2"
    weighted = FlodanceSolver(fraction=0.1, q=2, select_q=True, weight_power=2.0)
    assert weighted.label() == "fraction=0.1, q<=2 (auto), weight_power=2"
    assert FlodanceSolver(n_s=500).required_structure() is Structure.SPD
    ldl = FlodanceSolver(n_s=500, method="ldl")
    assert ldl.required_structure() is Structure.SYMMETRIC


def test_registers_solver():
    registered = []
    ldbench_register_solvers(registered.append)
    assert registered == [FlodanceSolver]
    assert FlodanceSolver.name == "flodance"


# --- failures of the input ---------------------------------------------------


def test_cholesky_rejects_indefinite(handle_factory, tmp_path):
    array = random_spd(40, seed=7)
    array[10, 10] = -5.0
    handle = handle_factory(array, structure=Structure.SYMMETRIC, block_size=1)
    with pytest.raises(SolverError, match="method='ldl'"):
        solve(FlodanceSolver(n_s=20), handle, tmp_path)


def test_ldl_rejects_pivots_across_sample_edges(handle_factory, tmp_path):
    # Zero diagonal forces 2x2 Bunch-Kaufman pivots over rows (2i, 2i+1), so
    # with d = 1 every odd k has no leading log-determinant.
    n = 30
    array = np.kron(np.eye(n // 2), np.array([[0.0, 1.0], [1.0, 0.0]]))
    handle = handle_factory(array, structure=Structure.SYMMETRIC, block_size=1)
    with pytest.raises(SolverError, match="LDL pivoting"):
        solve(FlodanceSolver(n_s=12, n0=2, method="ldl"), handle, tmp_path)


def test_ldl_exact_sign_of_indefinite(handle_factory, tmp_path):
    # The same matrix with d = 2 keeps every 2x2 pivot inside one sample.
    n = 10
    array = np.kron(np.eye(n), np.array([[0.0, 1.0], [1.0, 0.0]]))
    handle = handle_factory(array, structure=Structure.SYMMETRIC, block_size=2)
    estimate = solve(FlodanceSolver(n_s=n, method="ldl"), handle, tmp_path)
    assert abs(estimate.logabsdet) < 1e-12
    assert estimate.sign == (-1.0) ** n


def test_estimate_is_json_serialisable(handle_factory, tmp_path):
    array = random_spd(300, seed=8)
    handle = handle_factory(array, structure=Structure.SPD, block_size=1)
    estimate = solve(FlodanceSolver(n_s=250), handle, tmp_path)
    text = json.dumps(estimate.to_dict(), allow_nan=False)
    curve = json.loads(text)["details"]["curve"]
    assert len(curve["k"]) <= 201
    assert curve["k"][-1] == 250
    assert len(curve["fit"]) == len(curve["k"])


# --- accuracy on a small neural tangent kernel -------------------------------


def digits_ntk(n: int, seed: int) -> np.ndarray:
    """Return the NTK ``J J^T / P`` of a ReLU MLP on n digits, sample-major."""
    torch = pytest.importorskip("torch")
    from sklearn.datasets import load_digits
    from torch.func import functional_call, jacrev, vmap

    torch.manual_seed(seed)
    images, _ = load_digits(return_X_y=True)
    chosen = np.random.default_rng(seed).choice(len(images), n, replace=False)
    inputs = torch.tensor(images[chosen] / 16.0, dtype=torch.float64)
    network = torch.nn.Sequential(
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 10),
    ).double()
    params = {name: p.detach() for name, p in network.named_parameters()}
    count = sum(p.numel() for p in params.values())

    def outputs(p, x):
        return functional_call(network, p, (x[None],))[0]

    jacobians = vmap(jacrev(outputs), in_dims=(None, 0))(params, inputs)
    jacobian = torch.cat([j.reshape(n * 10, -1) for j in jacobians.values()], 1)
    return (jacobian @ jacobian.T / count).numpy()


def test_accuracy_on_digits_ntk(handle_factory, tmp_path):
    # Measured relative errors for seed 0: 3.2% at n_s = n/4 and 0.6% at
    # n_s = n/10, with 95% intervals of +-4.5% and +-9.5%. Seeds 0 to 3 at
    # n = 120 and 200 gave 0.4% to 4.6% at n/4, so 6% leaves margin for BLAS
    # differences. This network has only 9,098 parameters, 7.6 times m.
    n, d = 120, 10
    array = digits_ntk(n, seed=0)
    _, expected = np.linalg.slogdet(array)
    for fraction, limit in ((0.25, 0.06), (0.1, 0.06)):
        handle = handle_factory(array, structure=Structure.SPD, block_size=d)
        estimate = solve(FlodanceSolver(fraction=fraction), handle, tmp_path)
        assert estimate.read_order == round(fraction * n) * d
        assert abs(estimate.logabsdet - expected) / abs(expected) < limit
        low, high = estimate.interval
        assert low <= expected <= high
        assert estimate.details["level"] == 0.95


# --- error bars, regularisation and the choice of q ---------------------------


def test_interval_level_scales_width():
    rng = np.random.default_rng(9)
    n_s, n = 200, 800
    increments = law_increments(np.arange(1, n + 1), 1.0, [0.5])
    logdets = np.cumsum(increments + 0.3 * rng.standard_normal(n))[:n_s]
    widths = {}
    for level in (0.5, 0.95, 0.99):
        fit = fit_scaling_law(
            logdets, n0=10, n=n, q=0, settings=FitSettings(level=level)
        )
        low, high = fit.interval
        assert (low + high) / 2 == pytest.approx(fit.logdet)
        widths[level] = (high - low) / 2 / fit.stderr
    assert widths[0.5] == pytest.approx(0.6744897501960817)
    assert widths[0.95] == pytest.approx(1.959963984540054)
    assert widths[0.99] == pytest.approx(2.5758293035489004)


def test_misfit_widens_interval_for_bent_law():
    # The increments follow the law with nu_0 = 0.5 up to k = 100 and then
    # steepen by 0.002 * (k - 100), which the window k <= 150 only starts to
    # show. The noise-only interval misses the exact value; the misfit
    # check widens the interval enough to contain it.
    n_s, n = 150, 600
    k = np.arange(1, n + 1)
    increments = law_increments(k, 1.0, [0.5]) - 0.002 * np.maximum(k - 100, 0)
    increments += 0.01 * np.random.default_rng(10).standard_normal(n)
    logdets = np.cumsum(increments)
    exact = logdets[-1]
    noise_only = fit_scaling_law(
        logdets[:n_s], n0=30, n=n, q=0, settings=FitSettings(misfit=False)
    )
    low, high = noise_only.interval
    assert not low <= exact <= high
    honest = fit_scaling_law(logdets[:n_s], n0=30, n=n, q=0)
    low, high = honest.interval
    assert low <= exact <= high
    assert honest.misfit > 0.0
    assert honest.holdout["split"] in (90, 110)


def test_select_q_respects_max_q():
    n_s, n = 200, 1000
    logdets = np.cumsum(law_increments(np.arange(1, n + 1), 0.5, [0.9, 40.0]))
    fit = fit_scaling_law(
        logdets[:n_s], n0=10, n=n, q=None, settings=FitSettings(max_q=1)
    )
    assert set(fit.q_scores) == {0, 1}
    assert fit.q == 1


def test_select_q_finds_needed_term():
    # nu_1 = 40 makes q = 0 extrapolate badly; the held-out check detects it.
    n_s, n = 200, 1000
    b, nu = 0.5, [0.9, 40.0]
    increments = law_increments(np.arange(1, n + 1), b, nu)
    logdets = np.cumsum(increments)
    plain = fit_scaling_law(logdets[:n_s], n0=10, n=n, q=0)
    chosen = fit_scaling_law(
        logdets[:n_s], n0=10, n=n, q=None, settings=FitSettings(ridge=0.0)
    )
    assert chosen.q >= 1
    assert set(chosen.q_scores) == {0, 1, 2, 3}
    assert chosen.q_scores[0] > 100 * chosen.q_scores[chosen.q]
    assert abs(chosen.logdet - logdets[-1]) < 1e-6 * abs(logdets[-1])
    assert abs(plain.logdet - logdets[-1]) > 1e-3 * abs(logdets[-1])


def test_ridge_shrinks_higher_terms():
    rng = np.random.default_rng(11)
    n_s, n = 120, 480
    increments = law_increments(np.arange(1, n + 1), 1.0, [0.5])
    logdets = np.cumsum(increments + 0.5 * rng.standard_normal(n))[:n_s]
    free = fit_scaling_law(logdets, n0=5, n=n, q=2, settings=FitSettings(ridge=0.0))
    damped = fit_scaling_law(logdets, n0=5, n=n, q=2, settings=FitSettings(ridge=10.0))
    scaled_free = [abs(v) / n_s**j for j, v in enumerate(free.nu) if j]
    scaled_damped = [abs(v) / n_s**j for j, v in enumerate(damped.nu) if j]
    assert max(scaled_damped) < 0.05 * max(scaled_free)
    assert damped.condition < free.condition


def test_weights_keep_exact_law():
    n_s, n = 100, 500
    increments = law_increments(np.arange(1, n + 1), 0.3, [0.7, 2.0])
    logdets = np.cumsum(increments)
    for power in (0.0, 1.0, 3.0):
        settings = FitSettings(weight_power=power, ridge=0.0)
        fit = fit_scaling_law(logdets[:n_s], n0=5, n=n, q=1, settings=settings)
        assert fit.logdet == pytest.approx(logdets[-1], rel=1e-9)
        assert fit.nu[1] == pytest.approx(2.0, rel=1e-6)


# --- budget mode --------------------------------------------------------------


def test_budget_flops_sets_n_s():
    info = spd_info(10_000, 10)
    # (100 * 10)**3 / 3 flops fit exactly; one more sample does not.
    solver = FlodanceSolver(budget_flops=1000**3 / 3)
    assert solver.sample_plan(info)[0] == 100
    assert FlodanceSolver(budget_flops=1000**3 / 3 - 1).sample_plan(info)[0] == 99
    seconds = FlodanceSolver(budget_seconds=2.0, gflops=50.0)
    order = seconds.leading_order(info)
    assert order**3 / 3 <= 2.0 * 50e9 < (order + 10) ** 3 / 3
    assert "budget=2 s at 50 GFLOP/s" in seconds.label()
    # A budget above the whole factorisation gives the exact log-det.
    assert FlodanceSolver(budget_flops=1e15).sample_plan(info)[0] == 1000


def test_budget_too_small_rejected():
    with pytest.raises(ParameterError, match="budget"):
        FlodanceSolver(budget_flops=100.0).leading_order(spd_info(1000, 10))


# --- singular kernels ---------------------------------------------------------


def test_pseudo_determinant_of_low_rank_kernel(handle_factory, tmp_path):
    # K = J J^T with J of shape (m, P), P < m: rank P, and its nonzero
    # eigenvalues are those of J^T J, so the pseudo-log-det is log det(J^T J).
    n, d, parameters = 30, 4, 70
    jacobian = np.random.default_rng(12).standard_normal((n * d, parameters))
    array = jacobian @ jacobian.T
    _, expected = np.linalg.slogdet(jacobian.T @ jacobian)
    handle = handle_factory(array, structure=Structure.SYMMETRIC, block_size=d)
    estimate = solve(FlodanceSolver(n_s=n), handle, tmp_path)
    assert estimate.logabsdet == pytest.approx(expected, rel=1e-9)
    assert estimate.sign == 1.0
    assert estimate.details["pseudo_determinant"] is True
    assert estimate.details["rank"] == parameters
    handle = handle_factory(array, structure=Structure.SYMMETRIC, block_size=d)
    with pytest.raises(SolverError, match="not positive definite"):
        solve(FlodanceSolver(n_s=n, singular="error"), handle, tmp_path)


def test_details_hold_plot_data(handle_factory, tmp_path):
    n, d = 80, 2
    increments = law_increments(np.arange(1, n + 1), 1.0, [0.5])
    array = matrix_with_increments(increments, d, seed=13)
    handle = handle_factory(array, structure=Structure.SPD, block_size=d)
    details = solve(FlodanceSolver(n_s=20, n0=4), handle, tmp_path).details
    assert details["window"] == [4, 20]
    assert details["n"] == n
    extrapolation = details["curve"]["extrapolation"]
    assert extrapolation["k"][0] == 20
    assert extrapolation["k"][-1] == n
    assert extrapolation["logdet"][-1] == pytest.approx(np.sum(increments), rel=1e-8)
    assert details["curve"]["fit"][details["curve"]["k"].index(20)] == pytest.approx(
        np.sum(increments[:20]), rel=1e-10
    )


def test_solver_select_q_stays_below_q(handle_factory, tmp_path):
    n, d = 200, 2
    increments = law_increments(np.arange(1, n + 1), 0.5, [0.9, 40.0, 300.0])
    array = matrix_with_increments(increments, d, seed=14)
    handle = handle_factory(array, structure=Structure.SPD, block_size=d)
    estimate = solve(FlodanceSolver(n_s=60, q=1, select_q=True), handle, tmp_path)
    assert estimate.details["q_used"] <= 1
    assert set(estimate.details["q_scores"]) == {"0", "1"}


def test_blocked_cholesky_leading_curve(monkeypatch):
    from ldbench_flodance._curve import leading_logdets
    from matrices import kms_matrix

    from ldbench import _linalg

    rho = 0.6
    monkeypatch.setattr(_linalg, "LAPACK_CHOLESKY_MAX_ORDER", 50)
    monkeypatch.setattr(_linalg, "CHOLESKY_BLOCK", 32)
    curve = leading_logdets(kms_matrix(120, rho), 3, "cholesky")
    # The leading k samples of a KMS matrix form a KMS matrix of order 3k.
    expected = (3 * np.arange(1, 41) - 1) * math.log(1 - rho**2)
    assert np.allclose(curve.logdets, expected, rtol=1e-13, atol=0.0)
    assert np.all(curve.signs == 1.0)


@pytest.mark.parametrize("power", [math.nan, math.inf, -math.inf, -1000.0, 10.5])
def test_weight_power_out_of_range(power):
    with pytest.raises(ParameterError, match=f"weight_power={power} is invalid"):
        FlodanceSolver(fraction=0.1, weight_power=power)
