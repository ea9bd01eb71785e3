"""The exact stationary law of SGLD and SGHMC on Bayesian linear regression.

On a linear-Gaussian posterior every step of these samplers is affine in the state, and the
minibatch gradient noise is zero-mean with a covariance that is quadratic in the position. The
stationary mean and covariance then solve a LINEAR fixed-point equation, which is solved here
exactly (float64): the prediction the tests and the Franzese reproduction compare runs against,
and a way to see the bias a step size and batch size buy before running anything.
"""

from __future__ import annotations

import numpy as np

from ...energies._data import LinearRegression
from ._schedules import ConstantSchedule
from ._sgmcmc import SGHMC, SGLD


def _noise_terms(energy: LinearRegression, batch_size: int, replace: bool):
    """Per-datum centred terms `(r, D)` and the factor `κ` with
    `Cov(ĝ(x) | x) = κ Σᵢ (rᵢ − Dᵢ x)(rᵢ − Dᵢ x)ᵀ`."""
    phi = np.asarray(energy.design, np.float64)
    y = np.asarray(energy.targets, np.float64)
    s2 = energy.noise_scale**2
    big_n = phi.shape[0]
    m = np.einsum("ia,ib->iab", phi, phi) / s2  # per-datum Hessians M_i
    cv = energy.cv
    if cv is None:
        u = phi * y[:, None] / s2
    else:  # t_i(x) = c_i(x) - c_i(x̂) = -M_i (x - x̂)
        u = m @ np.asarray(cv.point, np.float64)
    r, d = u - u.mean(0), m - m.mean(0)
    n = batch_size
    if replace:
        kappa = big_n / n
    else:
        kappa = big_n**2 / n * (1.0 - n / big_n) / max(big_n - 1, 1)
    return r, d, kappa


def _solve(f, c, g_grad, g_noise, proj, r, dmat, kappa):
    """Stationary `(mean, covariance)` of `z' = F z + c + G_g ε(Pz) + G_ξ ξ`."""
    size = f.shape[0]
    eye = np.eye(size)
    mean = np.linalg.solve(eye - f, c)
    mx = proj @ mean
    s = r - dmat @ mx  # (N, d)
    const = kappa * g_grad @ (s.T @ s) @ g_grad.T + g_noise @ g_noise.T
    b = np.einsum("ab,ibc,cd->iad", g_grad, dmat, proj)  # G_g D_i P
    lin = np.kron(f, f) + kappa * np.einsum("iab,icd->acbd", b, b).reshape(size**2, size**2)
    cov = np.linalg.solve(np.eye(size**2) - lin, const.reshape(-1)).reshape(size, size)
    cov = 0.5 * (cov + cov.T)
    return mean, cov


def stationary_moments(sampler, energy: LinearRegression) -> tuple[np.ndarray, np.ndarray]:
    """The exact stationary mean and covariance of the position of `SGLD` or `SGHMC` (constant
    schedule, `noise_estimate=False`) on a [`driftax.energies.LinearRegression`][], with the
    energy's minibatch noise (with or without replacement, with or without a control
    variate). Compare with `energy.mean` / `energy.posterior_covariance` for the bias.

    **Returns:** `(mean, covariance)` as float64 NumPy arrays.
    """
    if not isinstance(energy, LinearRegression):
        raise TypeError(f"`energy` must be a LinearRegression, got {type(energy).__name__}.")
    if not isinstance(sampler, (SGLD, SGHMC)) or not isinstance(sampler.schedule, ConstantSchedule):
        raise TypeError("`sampler` must be an SGLD or SGHMC with a constant schedule.")
    if isinstance(sampler, SGHMC) and sampler.noise_estimate:
        raise ValueError("the stationary law is not linear with `noise_estimate=True`.")
    a = np.asarray(energy.posterior_precision, np.float64)
    phi = np.asarray(energy.design, np.float64)
    b = phi.T @ np.asarray(energy.targets, np.float64) / energy.noise_scale**2
    dim = a.shape[0]
    eye = np.eye(dim)
    zero = np.zeros((dim, dim))
    r, dmat, kappa = _noise_terms(energy, sampler.batch_size, sampler.replace)
    h = float(sampler.step_size)
    if isinstance(sampler, SGLD):
        return _solve(eye - h * a, h * b, h * eye, np.sqrt(2.0 * h) * eye, eye, r, dmat, kappa)
    gamma = float(sampler.friction)
    e = np.exp(-gamma * h)
    s = np.sqrt(-np.expm1(-2.0 * gamma * h))
    kick = np.block([[eye, zero], [-h * a, eye]])
    drift = np.block([[eye, 0.5 * h * eye], [zero, eye]])
    ou = np.block([[eye, zero], [zero, e * eye]])
    after_kick = drift @ ou @ drift
    f = after_kick @ kick
    c = after_kick @ np.concatenate([np.zeros(dim), h * b])
    g_grad = after_kick @ np.vstack([zero, h * eye])
    g_noise = drift @ np.vstack([zero, s * eye])
    proj = np.hstack([eye, zero])
    mean, cov = _solve(f, c, g_grad, g_noise, proj, r, dmat, kappa)
    return mean[:dim], cov[:dim, :dim]
