"""The Matern correlation function and a log-space modified Bessel function.

With ``r`` the distance divided by the length scale and ``z = sqrt(2 nu) r``,
the Matern correlation is

    k(r) = 2**(1 - nu) / Gamma(nu) * z**nu * K_nu(z),    k(0) = 1,

where ``K_nu`` is the modified Bessel function of the second kind. It is the
exponential kernel for ``nu = 1/2`` and tends to the squared exponential
``exp(-r**2 / 2)`` as ``nu`` grows. The scaling of ``r`` is the one of
``sklearn.gaussian_process.kernels.Matern``.
"""

from __future__ import annotations

import logging
import math

import numpy as np

logger = logging.getLogger(__name__)

# Below this z, K_nu(z) for nu > 1 exceeds the float64 range and
# 1 - k(r) ~ z**2 / (4 (nu - 1)) is far below machine epsilon, so k = 1.
_TINY_Z = 1e-100

#: Largest nu = p + 1/2 evaluated by the closed form. Its smallest
#: coefficient p! / (2p)! is about 1e-217 at p = 100 and underflows float64
#: near p = 140, so larger half-integers use the Bessel function path.
MAX_HALF_INTEGER_NU = 100.5


def matern_correlation(r: np.ndarray, nu: float) -> np.ndarray:
    """Evaluate the Matern correlation at scaled distances.

    Parameters
    ----------
    r
        Distances divided by the length scale, non-negative, any shape.
    nu
        Smoothness, positive; ``math.inf`` gives the squared exponential
        ``exp(-r**2 / 2)``. Half-integers up to :data:`MAX_HALF_INTEGER_NU`
        use their closed forms, other values ``log K_nu`` in log space.

    Returns
    -------
    numpy.ndarray
        Float64 array of the shape of ``r``, in ``[0, 1]``, equal to 1 where
        ``r == 0``.
    """
    r = np.asarray(r, dtype=np.float64)
    if nu == 0.5:
        return np.exp(-r)
    if nu == 1.5:
        z = math.sqrt(3.0) * r
        return (1.0 + z) * np.exp(-z)
    if nu == 2.5:
        z = math.sqrt(5.0) * r
        return (1.0 + z + z**2 / 3.0) * np.exp(-z)
    if math.isinf(nu):
        return np.exp(-0.5 * r**2)
    if (nu - 0.5).is_integer() and nu <= MAX_HALF_INTEGER_NU:
        return half_integer_correlation(r, int(nu - 0.5))
    return _general_correlation(r, nu)


def half_integer_correlation(r: np.ndarray, p: int) -> np.ndarray:
    """Evaluate the Matern correlation for ``nu = p + 1/2`` in closed form.

    With ``z = sqrt(2 nu) r`` and ``t = 2 z``,

        k(r) = exp(-z) sum_{i=0}^{p} c_i t**(p - i),
        c_i = p! (p + i)! / ((2p)! i! (p - i)!)

    because ``K_(p+1/2)(z)`` is ``sqrt(pi / (2 z)) exp(-z)`` times a
    polynomial of degree p in ``1 / z``. ``tests/test_matern.py`` checks the
    values against mpmath's Bessel function. Every term is positive, so Horner's rule loses no accuracy to
    cancellation. For ``t >= 1`` the polynomial is evaluated as
    ``t**p * sum_i c_i t**(-i)`` in log space, so it cannot overflow however
    large p or r is. The cost is p + 1 vector operations.
    """
    from scipy import special

    z = math.sqrt(2.0 * p + 1.0) * np.asarray(r, dtype=np.float64)
    i = np.arange(p + 1, dtype=np.float64)
    coefficients = np.exp(
        special.gammaln(p + 1.0)
        - special.gammaln(2.0 * p + 1.0)
        + special.gammaln(p + i + 1.0)
        - special.gammaln(i + 1.0)
        - special.gammaln(p - i + 1.0)
    )
    coefficients[-1] = 1.0  # exact, so that k(0) = 1 exactly
    t = 2.0 * z
    small = t < 1.0
    result = np.empty_like(z)
    # t < 1: sum_i c_i t**(p - i), highest power c_0 first.
    ts = t[small]
    value = np.full_like(ts, coefficients[0])
    for c in coefficients[1:]:
        value = value * ts + c
    result[small] = value * np.exp(-z[small])
    # t >= 1: t**p * sum_i c_i (1/t)**i, highest power of 1/t c_p first.
    tl = t[~small]
    inverse = 1.0 / tl
    value = np.full_like(tl, coefficients[-1])
    for c in coefficients[-2::-1]:
        value = value * inverse + c
    result[~small] = np.exp(p * np.log(tl) + np.log(value) - z[~small])
    return result


def _general_correlation(r: np.ndarray, nu: float) -> np.ndarray:
    from scipy import special

    z = math.sqrt(2.0 * nu) * r
    result = np.ones_like(z)
    positive = z > 0
    if nu > 1:
        positive &= z >= _TINY_Z
    zp = z[positive]
    # The log form avoids Gamma(nu) and K_nu(z) overflowing for large nu.
    log_k = (
        (1.0 - nu) * math.log(2.0)
        - special.gammaln(nu)
        + nu * np.log(zp)
        + log_bessel_k(nu, zp)
    )
    result[positive] = np.exp(log_k)
    return result


def log_bessel_k(nu: float, z: np.ndarray) -> np.ndarray:
    """Return ``log K_nu(z)`` for positive ``z``, also where ``K_nu`` overflows.

    Uses ``scipy.special.kve`` where it is finite, and the upward recurrence
    of :func:`log_bessel_k_recurrence` elsewhere.
    """
    from scipy import special

    z = np.asarray(z, dtype=np.float64)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        scaled = special.kve(nu, z)
        result = np.log(scaled) - z
    overflow = ~np.isfinite(result)
    if overflow.any():
        logger.debug(
            "K_%g overflows at %d points; using the recurrence", nu, overflow.sum()
        )
        result[overflow] = log_bessel_k_recurrence(nu, z[overflow])
    return result


def log_bessel_k_recurrence(nu: float, z: np.ndarray) -> np.ndarray:
    """Return ``log K_nu(z)`` by upward recurrence in the order, in log space.

    Starting from ``nu0 = nu - N`` in ``(0, 1]`` with ``N = ceil(nu) - 1``, the
    ratios ``q_mu = K_(mu+1)(z) / K_mu(z)`` follow
    ``q_mu = 2 mu / z + 1 / q_(mu-1)``, the recurrence
    ``K_(mu+1) = K_(mu-1) + (2 mu / z) K_mu`` divided by ``K_mu``. ``K`` grows
    with the order, so the upward direction is the stable one. Summing
    ``log q`` keeps the result in range where ``K_nu`` overflows. The cost is
    ``N`` vector operations over ``z``.
    """
    from scipy import special

    z = np.asarray(z, dtype=np.float64)
    steps = max(0, math.ceil(nu) - 1)
    nu0 = nu - steps
    base = special.kve(nu0, z)
    result = np.log(base) - z
    if steps == 0:
        return result
    ratio = special.kve(nu0 + 1.0, z) / base
    result += np.log(ratio)
    for j in range(1, steps):
        ratio = 2.0 * (nu0 + j) / z + 1.0 / ratio
        result += np.log(ratio)
    return result
