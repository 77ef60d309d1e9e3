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


def matern_correlation(r: np.ndarray, nu: float) -> np.ndarray:
    """Evaluate the Matern correlation at scaled distances.

    Parameters
    ----------
    r
        Distances divided by the length scale, non-negative, any shape.
    nu
        Smoothness, positive; ``math.inf`` gives the squared exponential
        ``exp(-r**2 / 2)``. The values 1/2, 3/2 and 5/2 use their closed forms.

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
    return _general_correlation(r, nu)


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
