"""The ``flodance`` solver: extrapolate a log-determinant from a leading block."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, ClassVar

import numpy as np

from ldbench import (
    Estimate,
    MatrixHandle,
    MatrixInfo,
    Param,
    ParameterError,
    SolveContext,
    Solver,
    SolverError,
    Structure,
)

from ._curve import LeadingCurve, leading_logdets, pseudo_logdet
from ._fit import FitSettings, ScalingFit, fit_scaling_law

logger = logging.getLogger(__name__)

__all__ = ["FlodanceSolver"]

#: Default start of the fitting window as a fraction of n_s. On MLP NTKs of
#: the scikit-learn digits (n = 600, d = 10, P = 65,010) and Matern kernels
#: (n = 800, d = 10, nu = 1.5, length scales 0.1 to 0.5), the increment fit
#: with q = 0 had a lower mean relative error from 0.2*n_s than from
#: 0.05*n_s, at n_s = n/4 and at n_s = n/10.
DEFAULT_N0_FRACTION = 0.2

#: Assumed factorisation rate of the budget mode when 'gflops' is not set, in
#: 10**9 flop/s: a conservative figure for a few cores of a current CPU.
DEFAULT_GFLOPS = 10.0

#: Largest |weight_power| accepted.
MAX_WEIGHT_POWER = 10.0

#: Maximum number of points of the l_k curve stored in the details.
CURVE_POINTS = 200

#: Points of the fitted law stored between n_s and n, for the plot.
EXTRAPOLATION_POINTS = 50


class FlodanceSolver(Solver):
    """FLODANCE: fit a neural scaling law to the log-determinants of leading
    sample blocks and extrapolate it to all samples.

    One factorisation of the leading ``m_s = n_s * d`` block gives
    ``l_k = log det K_k`` for every ``k <= n_s`` samples. A least-squares fit
    of the increments ``l_k - l_(k-1) ~ b - sum_j nu_j * log(k) / k**j`` on
    ``k = n0+1..n_s``, summed from the exact ``l_(n_s)``, is evaluated at the
    matrix's sample count n. Only the leading block is read, so the cost is
    ``m_s**3 / 3`` flops plus the fit instead of ``m**3 / 3``.
    """

    name = "flodance"
    # 2: increment fit anchored at l_(n_s), held-out misfit in the interval.
    version = "2"
    parameters: ClassVar[dict[str, Param]] = {
        "n_s": Param(
            None,
            int,
            "Samples in the factorised leading block (count); set this, "
            "'fraction', 'budget_flops' or 'budget_seconds'.",
            minimum=1,
        ),
        "fraction": Param(
            None,
            float,
            "Leading-block samples as a fraction of all samples, in (0, 1]; "
            "n_s = round(fraction * n). Alternative to 'n_s'.",
        ),
        "n0": Param(
            None,
            int,
            "First sample count of the fitting window (count); default "
            f"max(1, round({DEFAULT_N0_FRACTION} * n_s)), lowered to n_s - q - 3 "
            "when the window would be too short.",
            minimum=1,
        ),
        "budget_flops": Param(
            None,
            float,
            "Flop budget of the factorisation (flop); n_s is the largest "
            "sample count with (n_s*d)**3/3 within it. Alternative to 'n_s'.",
            minimum=1.0,
        ),
        "budget_seconds": Param(
            None,
            float,
            "Time budget of the factorisation (s), turned into flops at "
            "'gflops'. Alternative to 'n_s'.",
            minimum=0.0,
        ),
        "gflops": Param(
            DEFAULT_GFLOPS,
            float,
            "Factorisation rate assumed by 'budget_seconds' (10**9 flop/s); "
            "the measured rate of each solve is in the details as "
            "'factor_gflops'.",
            minimum=1e-6,
        ),
        "q": Param(
            0,
            int,
            "Number of Laurent terms nu_1/k, ..., nu_q/k**q added to the "
            "exponent nu_0; with select_q, the largest q tried.",
            minimum=0,
        ),
        "select_q": Param(
            False,
            bool,
            "Choose q in 0..q by the smallest error of a held-out "
            "extrapolation inside the window.",
        ),
        "ridge": Param(
            0.01,
            float,
            "Ridge penalty on nu_1..nu_q, relative to the sum of squared "
            "increments (dimensionless); 0 is plain least squares.",
            minimum=0.0,
        ),
        "weight_power": Param(
            0.0,
            float,
            "Weight (k/n_s)**weight_power of increment k in the fit; positive "
            "values favour the end of the window, and -1 gives each doubling "
            "of k the same total weight. At most 10 in absolute value.",
        ),
        "level": Param(
            0.95,
            float,
            "Confidence level of the reported interval, in (0, 1).",
        ),
        "misfit": Param(
            True,
            bool,
            "Widen the interval by the error of a held-out extrapolation "
            "inside the window; false gives the noise-only interval.",
        ),
        "singular": Param(
            "pseudo",
            str,
            "When the leading block is singular and n_s = n: 'pseudo' returns "
            "the pseudo-determinant (product of eigenvalues above a "
            "threshold), 'error' fails.",
            choices=("pseudo", "error"),
        ),
        "method": Param(
            "cholesky",
            str,
            "Factorisation of the leading block: 'cholesky' (SPD) or 'ldl' "
            "(symmetric, Bunch-Kaufman).",
            choices=("cholesky", "ldl"),
        ),
    }
    structures = frozenset({Structure.SYMMETRIC, Structure.SPD})

    def validate(self) -> None:
        """Check that exactly one of n_s and fraction is set, and its range."""
        n_s = self.params["n_s"]
        fraction = self.params["fraction"]
        size_settings = {
            key: self.params[key]
            for key in ("n_s", "fraction", "budget_flops", "budget_seconds")
            if self.params[key] is not None
        }
        if not size_settings:
            raise ParameterError(
                "solver 'flodance': set 'n_s' (samples in the leading block), "
                "'fraction' (share of all samples), 'budget_flops' or "
                "'budget_seconds'"
            )
        if len(size_settings) > 1:
            settings_text = " and ".join(f"{k}={v}" for k, v in size_settings.items())
            raise ParameterError(f"solver 'flodance': set only one of {settings_text}")
        level = self.params["level"]
        if not 0.0 < level < 1.0:
            raise ParameterError(
                f"solver 'flodance': level={level} is outside (0, 1); use 0.95 "
                "for a 95% interval"
            )
        if fraction is not None and not 0.0 < fraction <= 1.0:
            raise ParameterError(
                f"solver 'flodance': fraction={fraction} is outside (0, 1]"
            )
        power = self.params["weight_power"]
        # The weights span n_s**|weight_power|, 1e50 at 10 and n_s = 100,000.
        # At -1000 the fit's SVD did not converge, and inf overflows them.
        if not -MAX_WEIGHT_POWER <= power <= MAX_WEIGHT_POWER:
            raise ParameterError(
                f"solver 'flodance': weight_power={power} is invalid. Use a finite "
                f"value in [-{MAX_WEIGHT_POWER:g}, {MAX_WEIGHT_POWER:g}], such as 2 "
                "for NTKs or -1 for Matérn kernels"
            )
        n0 = self.params["n0"]
        if n_s is not None and n0 is not None:
            self._check_window(n_s, n0)

    def _check_window(self, n_s: int, n0: int) -> None:
        q = self.params["q"]
        if n_s < n0 + q + 2:
            raise ParameterError(
                f"solver 'flodance': n_s={n_s} leaves {n_s - n0 + 1} samples in "
                f"the window n0={n0}..n_s, fewer than the {q + 3} coefficients "
                f"of the law with q={q}; raise n_s to at least {n0 + q + 2} or "
                "lower n0 or q"
            )

    def required_structure(self) -> Structure:
        """SPD for Cholesky, symmetric for LDL."""
        if self.params["method"] == "cholesky":
            return Structure.SPD
        return Structure.SYMMETRIC

    def label(self) -> str:
        """Return settings such as ``"n_s=500, q=0"``. A nonzero weight_power
        is named too, so rows that differ only in it stay apart."""
        if self.params["n_s"] is not None:
            parts = [f"n_s={self.params['n_s']}"]
        elif self.params["fraction"] is not None:
            parts = [f"fraction={self.params['fraction']:g}"]
        elif self.params["budget_flops"] is not None:
            parts = [f"budget={self.params['budget_flops']:.3g} flop"]
        else:
            parts = [
                (
                    f"budget={self.params['budget_seconds']:g} s at "
                    f"{self.params['gflops']:g} GFLOP/s"
                )
            ]
        if self.params["n0"] is not None:
            parts.append(f"n0={self.params['n0']}")
        if self.params["select_q"]:
            parts.append(f"q<={self.params['q']} (auto)")
        else:
            parts.append(f"q={self.params['q']}")
        if self.params["weight_power"]:
            parts.append(f"weight_power={self.params['weight_power']:g}")
        if self.params["method"] != "cholesky":
            parts.append("LDL")
        return ", ".join(parts)

    def sample_plan(self, info: MatrixInfo) -> tuple[int, int]:
        """Return ``(n_s, n0)`` for a matrix of ``info.samples`` samples.

        Raises
        ------
        ParameterError
            When n_s exceeds the sample count, rounds to zero, or leaves
            too few samples in the fitting window.
        """
        n = info.samples
        n_s = self.params["n_s"]
        if n_s is None and self.params["fraction"] is None:
            n_s = min(n, self._budget_samples(info.block_size))
            if n_s < 1:
                raise ParameterError(
                    "solver 'flodance': the budget does not cover the "
                    f"factorisation of one sample of d={info.block_size} rows; "
                    "raise budget_flops or budget_seconds"
                )
        elif n_s is None:
            n_s = round(self.params["fraction"] * n)
            if n_s < 1:
                raise ParameterError(
                    f"solver 'flodance': fraction={self.params['fraction']} of "
                    f"n={n} samples rounds to n_s=0; raise fraction"
                )
        if n_s > n:
            raise ParameterError(
                f"solver 'flodance': n_s={n_s} exceeds the n={n} samples of the "
                f"matrix ({info.description or 'order ' + str(info.order)}); "
                f"use n_s <= {n}"
            )
        n0 = self.params["n0"]
        if n_s == n:
            return n_s, 1 if n0 is None else n0
        if n0 is None:
            n0 = self._default_n0(n_s)
        self._check_window(n_s, n0)
        return n_s, n0

    def _budget_samples(self, block_size: int) -> int:
        """Return the largest n_s whose factorisation fits the budget."""
        budget = self.params["budget_flops"]
        if budget is None:
            budget = self.params["budget_seconds"] * self.params["gflops"] * 1e9
        order = int((3.0 * budget) ** (1.0 / 3.0))
        # Correct the rounding of the cube root in either direction.
        while order > 0 and order**3 / 3.0 > budget:
            order -= 1
        while (order + 1) ** 3 / 3.0 <= budget:
            order += 1
        return order // block_size

    def _default_n0(self, n_s: int) -> int:
        n0 = max(1, round(DEFAULT_N0_FRACTION * n_s))
        # Keep one residual degree of freedom for the error bar if n_s allows.
        return max(1, min(n0, n_s - self.params["q"] - 3))

    def leading_order(self, info: MatrixInfo) -> int:
        """Return ``n_s * d``, the order of the leading block that is read."""
        n_s, _ = self.sample_plan(info)
        return n_s * info.block_size

    def flops(self, info: MatrixInfo) -> float:
        """Return ``m_s**3 / 3`` for the factorisation plus the fit's count.

        The fit solves least-squares problems of about ``N = n_s - n0``
        rows and ``p = q + 3`` columns by a thin SVD, counted as
        ``6*N*p**2 + 11*p**3`` flops each (a leading-order estimate): two
        (fit and held-out check), or ``2*(q + 2)`` with select_q.
        """
        n_s, n0 = self.sample_plan(info)
        order = n_s * info.block_size
        factor_flops = order**3 / 3.0
        if n_s == info.samples:
            return factor_flops
        rows = n_s - n0 + 1
        columns = self.params["q"] + 3
        fits = 2 * (self.params["q"] + 2) if self.params["select_q"] else 2
        return factor_flops + fits * (6.0 * rows * columns**2 + 11.0 * columns**3)

    def solve(self, matrix: MatrixHandle, context: SolveContext) -> Estimate:
        """Factorise the leading block, fit the law and extrapolate to n.

        Returns the exact log-determinant with ``stderr=0`` when n_s equals
        the sample count n.
        """
        info = matrix.info
        n = info.samples
        n_s, n0 = self.sample_plan(info)
        order = n_s * info.block_size
        method = self.params["method"]
        start = time.perf_counter()
        block = matrix.block(0, order, 0, order)
        read_seconds = time.perf_counter() - start
        start = time.perf_counter()
        try:
            with np.errstate(divide="ignore"):
                curve = leading_logdets(block, info.block_size, method)
        except SolverError:
            if n_s != n or self.params["singular"] != "pseudo":
                raise
            del block
            return self._pseudo_estimate(matrix, info, start)
        del block
        factor_seconds = time.perf_counter() - start
        logger.info(
            "flodance: factorised leading block of order %d (%s) in %.3g s",
            order,
            method,
            factor_seconds,
        )
        details: dict[str, Any] = {
            "n": n,
            "n_s": n_s,
            "m_s": order,
            "n0": n0,
            "q": self.params["q"],
            "method": method,
            "read_seconds": read_seconds,
            "factor_seconds": factor_seconds,
            "factor_gflops": order**3 / 3.0 / max(factor_seconds, 1e-9) / 1e9,
            "leading_logdet": _json_number(curve.logdets[-1]),
        }
        if n_s == n:
            return self._exact_estimate(curve, info, details)

        if not curve.valid(n0, n_s):
            bad = n0 + int(np.argmin(np.isfinite(curve.signs[n0 - 1 :])))
            raise SolverError(
                f"LDL pivoting mixed rows across the edge of sample k={bad} "
                f"inside the fitting window {n0}..{n_s}, so log det K_k is "
                "unknown there; use method='cholesky' for an SPD matrix"
            )
        if not np.all(np.isfinite(curve.signs[: n0 - 1])):
            # NOTE: with Bunch-Kaufman pivoting, l_k is known only where the
            # permutation maps rows 0..k*d-1 onto themselves and no 2x2 pivot
            # straddles row k*d. Other k below the window become null.
            logger.warning(
                "flodance: LDL pivoting crossed %d sample edges below n0=%d, so "
                "those l_k are stored as null",
                int(np.sum(~np.isfinite(curve.signs[: n0 - 1]))),
                n0,
            )
        window = curve.logdets[n0 - 1 :]
        if not np.all(np.isfinite(window)):
            raise SolverError(
                f"a leading block in the window n0={n0}..n_s={n_s} is singular "
                "(log-determinant -inf), so the law cannot be fitted"
            )
        start = time.perf_counter()
        settings = FitSettings(
            max_q=self.params["q"],
            ridge=self.params["ridge"],
            weight_power=self.params["weight_power"],
            level=self.params["level"],
            misfit=self.params["misfit"],
        )
        q = None if self.params["select_q"] else self.params["q"]
        fit = fit_scaling_law(curve.logdets, n0, n, q, settings)
        details["fit_seconds"] = time.perf_counter() - start
        details.update(_fit_details(fit, curve))
        return Estimate(
            logabsdet=fit.logdet,
            sign=1.0 if info.structure is Structure.SPD else math.nan,
            flops=self.flops(info),
            read_order=order,
            stderr=fit.stderr,
            interval=fit.interval,
            details=details,
        )

    def _pseudo_estimate(
        self, matrix: MatrixHandle, info: MatrixInfo, start: float
    ) -> Estimate:
        """Return the pseudo-determinant of the whole matrix, flagged as such."""
        block = matrix.block(0, info.order, 0, info.order)
        pseudo = pseudo_logdet(block)
        del block
        logger.warning(
            "flodance: the matrix of order %d is singular (numerical rank %d), "
            "so the estimate is its pseudo-determinant",
            info.order,
            pseudo.rank,
        )
        details: dict[str, Any] = {
            "n": info.samples,
            "n_s": info.samples,
            "m_s": info.order,
            "exact": True,
            "pseudo_determinant": True,
            "rank": pseudo.rank,
            "eigenvalue_threshold": pseudo.threshold,
            "factor_seconds": time.perf_counter() - start,
        }
        return Estimate(
            logabsdet=pseudo.logdet,
            sign=1.0,
            # Eigenvalues only: the tridiagonal reduction dominates with
            # 4 m**3 / 3 flops (leading order).
            flops=4.0 / 3.0 * info.order**3,
            read_order=info.order,
            stderr=0.0,
            interval=(pseudo.logdet, pseudo.logdet),
            details=details,
        )

    def _exact_estimate(
        self, curve: LeadingCurve, info: MatrixInfo, details: dict[str, Any]
    ) -> Estimate:
        details["exact"] = True
        details["pseudo_determinant"] = False
        details["curve"] = _curve_summary(curve, None)
        logdet = float(curve.logdets[-1])
        sign = float(curve.signs[-1])
        if math.isinf(logdet):
            sign = 0.0
        return Estimate(
            logabsdet=logdet,
            sign=sign,
            flops=self.flops(info),
            read_order=info.order,
            stderr=0.0,
            interval=(logdet, logdet),
            details=details,
        )


def _fit_details(fit: ScalingFit, curve: LeadingCurve) -> dict[str, Any]:
    return {
        "exact": False,
        "pseudo_determinant": False,
        "window": [fit.n0, fit.n_s],
        "q_used": fit.q,
        "q_scores": {str(q): v for q, v in fit.q_scores.items()},
        "ridge": fit.ridge,
        "weight_power": fit.weight_power,
        "level": fit.level,
        "noise_stderr": fit.noise_stderr,
        "misfit_stderr": fit.misfit,
        "holdout": fit.holdout,
        "coefficients": {"a": fit.a, "b": fit.b, "nu": fit.nu},
        "sigma": fit.sigma,
        "residual_rms": fit.residual_rms,
        "condition": fit.condition,
        "curve": _curve_summary(curve, fit),
    }


def _curve_summary(curve: LeadingCurve, fit: ScalingFit | None) -> dict[str, Any]:
    """Return at most CURVE_POINTS samples of l_k (and the fit) for plotting."""
    n_s = curve.logdets.size
    ks = np.unique(np.linspace(1, n_s, min(n_s, CURVE_POINTS)).round().astype(int))
    if fit is not None:
        ks = np.union1d(ks, [fit.n0])
    summary: dict[str, Any] = {
        "k": ks.tolist(),
        "logdet": [_json_number(v) for v in curve.logdets[ks - 1]],
    }
    if fit is not None:
        summary["fit"] = [float(v) for v in fit.predict(ks)]
        beyond = np.linspace(fit.n_s, fit.n, EXTRAPOLATION_POINTS).round()
        beyond = np.unique(beyond.astype(int))
        summary["extrapolation"] = {
            "k": beyond.tolist(),
            "logdet": [float(v) for v in fit.predict(beyond)],
        }
    return summary


def _json_number(value: float) -> float | None:
    """Return ``value`` as a float, or None for NaN and inf."""
    value = float(value)
    return value if math.isfinite(value) else None
