"""The ``hutchpp`` solver: Hutch++ trace estimate of log(A) with a Chebyshev
polynomial."""

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

from ._bounds import lanczos_bounds, lanczos_flops
from ._chebyshev import apply_polynomial, log_coefficients, max_error, polynomial_flops

logger = logging.getLogger(__name__)

__all__ = ["HutchppSolver"]

#: Largest allowed ``|A - A^T|`` entry relative to the largest ``|A|`` entry.
SYMMETRY_RTOL = 1e-10

#: Without ``min_eig`` the lower end of the interval is this fraction of the
#: smallest Ritz value, which is an upper bound of the smallest eigenvalue.
LOWER_FRACTION = 0.5

#: Two-sided 95% normal quantile for the interval.
Z95 = 1.959963984540054


class HutchppSolver(Solver):
    """Hutch++ estimate of ``log det A = tr log A`` for an SPD matrix.

    ``log A`` is replaced by a Chebyshev interpolant ``p(A)`` of degree
    ``degree`` on an interval ``[a, b]`` that should contain the spectrum.
    Without ``min_eig`` and ``max_eig`` the interval comes from
    ``lanczos_steps`` Lanczos steps: ``a`` is half the smallest Ritz value and
    ``b`` the largest Ritz value plus its residual norm. Hutch++ (Meyer,
    Musco, Musco and Woodruff, 2021) splits ``s = samples`` products with
    ``p(A)`` into
    three groups of ``k = s / 3``: a sketch ``Y = p(A) S`` whose orthonormal
    basis ``Q`` gives the exact trace ``tr(Q^T p(A) Q)`` of the dominant part,
    and ``k`` Rademacher probes of the rest, ``(I - QQ^T) p(A) (I - QQ^T)``.

    ``stderr`` is the sampling error of the probe mean, conditional on the
    sketch. The interpolation error is not in it: ``details`` gives
    ``chebyshev_max_error``, the largest ``|log x - p(x)|`` on ``[a, b]``, and
    ``bias_bound = m * chebyshev_max_error``, which bounds
    ``|tr log A - tr p(A)|`` when the spectrum lies in ``[a, b]``.

    The matrix is read into memory (8 m^2 bytes). FLOPs, with a multiply-add
    counted as two, are dominated by ``3 * d * 2 m^2 k = 2 m^2 d s`` for the
    polynomial products; :meth:`flops` adds the Lanczos run, the QR
    factorisation, the projections and the symmetry check.
    """

    name: ClassVar[str] = "hutchpp"
    version: ClassVar[str] = "1"
    parameters: ClassVar[dict[str, Param]] = {
        "degree": Param(60, int, "Degree of the Chebyshev interpolant of log.",
                        minimum=1),
        "samples": Param(30, int, "Products with p(A), s, a multiple of 3: s/3 "
                         "sketch columns, s/3 for their trace, s/3 probes.",
                         minimum=3),
        "lanczos_steps": Param(20, int, "Lanczos steps for the spectral interval.",
                               minimum=1),
        "min_eig": Param(None, float, "Lower end of the spectral interval (same "
                         "units as the entries); estimated when unset."),
        "max_eig": Param(None, float, "Upper end of the spectral interval; "
                         "estimated when unset."),
    }
    structures: ClassVar[frozenset[Structure]] = frozenset({Structure.SPD})
    requires: ClassVar[tuple[str, ...]] = ("scipy",)
    stochastic: ClassVar[bool] = True
    device: ClassVar[str] = "cpu"

    def validate(self) -> None:
        """Check that samples is a multiple of 3 and the interval is positive."""
        samples = self.params["samples"]
        if samples % 3:
            raise ParameterError(
                f"solver 'hutchpp': samples={samples} is not a multiple of 3; "
                f"use {samples - samples % 3 or 3} or {samples + 3 - samples % 3}"
            )
        low, high = self.params["min_eig"], self.params["max_eig"]
        if low is not None and not low > 0:
            raise ParameterError(
                f"solver 'hutchpp': min_eig={low} must be positive, because log "
                "is undefined at and below 0"
            )
        if low is not None and high is not None and not low < high:
            raise ParameterError(
                f"solver 'hutchpp': min_eig={low} must be smaller than max_eig={high}"
            )

    def label(self) -> str:
        """Return settings such as ``"deg=60, s=30"``."""
        return f"deg={self.params['degree']}, s={self.params['samples']}"

    def _columns(self, order: int) -> int:
        columns = self.params["samples"] // 3
        if columns > order:
            raise ParameterError(
                f"solver 'hutchpp': samples={self.params['samples']} gives "
                f"{columns} sketch columns, more than the order {order}; use "
                f"samples <= {3 * order}"
            )
        return columns

    def flops(self, info: MatrixInfo) -> float:
        """Return the FLOP count for ``m = info.order`` (multiply-add = 2).

        With ``d`` the degree, ``k = samples / 3`` and ``l`` Lanczos steps
        (``l = 0`` when both bounds are given):

        - symmetry check: ``m^2``;
        - Lanczos: :func:`~ldbench_hutchpp._bounds.lanczos_flops`;
        - Chebyshev coefficients: ``2 (d + 1)^2``;
        - three products with ``p(A)``: ``3 d (2 m^2 k + 6 m k)``;
        - Householder QR of the ``m x k`` sketch and forming ``Q``:
          ``4 m k^2 - 4 k^3 / 3``;
        - projecting the probes, ``G - Q (Q^T G)``: ``4 m k^2 + m k``;
        - the two traces: ``4 m k``.
        """
        m = float(info.order)
        k = self._columns(info.order)
        degree = self.params["degree"]
        total = m * m
        if self._needs_lanczos():
            total += lanczos_flops(info.order, self.params["lanczos_steps"])
        total += 2.0 * (degree + 1) ** 2
        total += 3.0 * polynomial_flops(info.order, k, degree)
        total += 4.0 * m * k * k - 4.0 * k**3 / 3.0
        total += 4.0 * m * k * k + m * k
        total += 4.0 * m * k
        return total

    def _needs_lanczos(self) -> bool:
        return self.params["min_eig"] is None or self.params["max_eig"] is None

    def solve(self, matrix: MatrixHandle, context: SolveContext) -> Estimate:
        """Estimate the log-determinant of the readable block of ``matrix``.

        Random numbers come from ``numpy.random.default_rng(context.seed)``,
        so a seed reproduces the estimate.

        Raises
        ------
        SolverError
            When the matrix is not symmetric, or when a Ritz value or
            ``min_eig`` shows it is not positive definite.
        """
        order = matrix.order
        columns = self._columns(order)
        start = time.perf_counter()
        array = matrix.read()
        read_seconds = time.perf_counter() - start
        _check_symmetric(array)
        rng = np.random.default_rng(context.seed)

        start = time.perf_counter()
        lower, upper, bounds_details = self._interval(array, rng)
        coefficients = log_coefficients(lower, upper, self.params["degree"])
        interpolation_error = max_error(coefficients, lower, upper)

        sketch = rng.choice((-1.0, 1.0), size=(order, columns))
        probes = rng.choice((-1.0, 1.0), size=(order, columns))
        basis, _ = np.linalg.qr(apply_polynomial(array, sketch, coefficients, lower, upper))
        low_rank = float(np.sum(basis * apply_polynomial(array, basis, coefficients,
                                                         lower, upper)))
        projected = probes - basis @ (basis.T @ probes)
        images = apply_polynomial(array, projected, coefficients, lower, upper)
        quadratic_forms = np.sum(projected * images, axis=0)
        residual = float(np.mean(quadratic_forms))
        estimate = low_rank + residual
        solve_seconds = time.perf_counter() - start

        stderr = None
        interval = None
        if columns >= 2:
            stderr = float(np.std(quadratic_forms, ddof=1) / math.sqrt(columns))
            interval = (estimate - Z95 * stderr, estimate + Z95 * stderr)
        details: dict[str, Any] = {
            "degree": self.params["degree"],
            "samples": self.params["samples"],
            "sketch_columns": columns,
            "seed": context.seed,
            "interval_low": lower,
            "interval_high": upper,
            "chebyshev_max_error": interpolation_error,
            "bias_bound": order * interpolation_error,
            "low_rank_trace": low_rank,
            "residual_trace": residual,
            "read_seconds": read_seconds,
            "solve_seconds": solve_seconds,
            **bounds_details,
        }
        logger.debug("hutchpp: logdet=%r stderr=%r on [%g, %g]", estimate, stderr,
                     lower, upper)
        return Estimate(
            logabsdet=estimate,
            sign=1.0,
            flops=self.flops(MatrixInfo(order, matrix.info.structure)),
            read_order=order,
            stderr=stderr,
            interval=interval,
            details=details,
        )

    def _interval(
        self, array: np.ndarray, rng: np.random.Generator
    ) -> tuple[float, float, dict[str, Any]]:
        """Return ``(a, b)`` for the interpolant and how they were found."""
        lower, upper = self.params["min_eig"], self.params["max_eig"]
        details: dict[str, Any] = {}
        if self._needs_lanczos():
            ritz = lanczos_bounds(array, self.params["lanczos_steps"], rng)
            details.update(lanczos_steps_run=ritz.steps, ritz_min=ritz.smallest,
                           ritz_max=ritz.largest)
            if ritz.smallest <= 0:
                raise SolverError(
                    f"a Ritz value is {ritz.smallest:.3g} <= 0, so the matrix is "
                    "not positive definite and log det is not tr log A; use the "
                    "dense solver with method 'ldl' or 'lu'"
                )
            if lower is None:
                # NOTE: the smallest Ritz value bounds the smallest eigenvalue
                # only from above. Eigenvalues below a = ritz_min / 2 lie
                # outside the interpolation interval, where p(x) stays near
                # p(a) while log x falls, so the estimate is biased upwards.
                lower = LOWER_FRACTION * ritz.smallest
            if upper is None:
                upper = ritz.largest + ritz.largest_residual
        if not lower < upper:
            # A multiple of the identity has a single Ritz value; widen the
            # interval so the interpolant is defined.
            upper = 2.0 * lower
        return float(lower), float(upper), details


def _check_symmetric(array: np.ndarray) -> None:
    """Raise SolverError when ``array`` is not symmetric within SYMMETRY_RTOL."""
    scale = float(np.max(np.abs(array), initial=0.0))
    asymmetry = float(np.max(np.abs(array - array.T), initial=0.0))
    if asymmetry > SYMMETRY_RTOL * max(scale, 1e-300):
        raise SolverError(
            f"matrix is not symmetric: largest |A[i,j] - A[j,i]| = {asymmetry:.3e} "
            f"against a largest entry of {scale:.3e}; Hutch++ here needs an SPD "
            "matrix, so use the dense solver with method 'lu'"
        )
