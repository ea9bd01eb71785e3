"""PFGM++ (Xu, Liu, Tian, Tong, Tegmark & Jaakkola 2023): the heavy-tailed perturbation kernel
with augmentation dimension D, its sampling, the exact field of a finite data set, and the
denoising loss. D -> infinity recovers the Gaussian (EDM) path."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Key, Point, Scalar, ScalarLike
from ._closed_form import _check_data
from ._losses import AbstractLoss, _check_model
from ._path import EDM


def _log_normalizer(n: int, d) -> Array:
    """`log Gamma((n + D) / 2) - log Gamma(D / 2) - (n / 2) log pi` (float64 when D is a number)."""
    if isinstance(d, jax.core.Tracer):
        g = jax.scipy.special.gammaln
        return g(0.5 * (n + d)) - g(0.5 * d) - 0.5 * n * math.log(math.pi)
    d = float(d)
    return jnp.asarray(
        math.lgamma(0.5 * (n + d)) - math.lgamma(0.5 * d) - 0.5 * n * math.log(math.pi)
    )


class PFGMPP(eqx.Module):
    """The PFGM++ perturbation kernel with augmentation dimension `D`, on the EDM time `sigma`.

    For data `y` in `R^N` and `r = sigma sqrt(D)`, the kernel is
    `p_sigma(x | y) ∝ (|x - y|^2 + r^2)^(-(N + D) / 2)`: a radially symmetric, heavy-tailed law
    whose radius has `|x - y|^2 / r^2 ~ BetaPrime(N / 2, D / 2)`. As `D -> infinity` it tends to
    `N(y, sigma^2 I)`, the EDM path; small `D` gives heavier tails (more robust sampling, per the
    paper). The probability-flow ODE keeps EDM's form `dx/dsigma = (x - E[y | x]) / sigma`, so a
    PFGM++ denoiser runs through [`solve`][] on `self.path` (`EDM(sigma_min, sigma_max)`) with
    `parameterization="data"` (or `"velocity"`, `"noise"`) and any ODE solver. Its score is not
    `(D(x) - x) / sigma^2`: do not use `"score"` or a stochastic solver with it.

    **Fields:**

    - `D`: the augmentation dimension (a number > 0; `inf` is not allowed, use `EDM`).
    - `sigma_min`, `sigma_max`: the ends of generation (EDM's defaults `0.002` and `80`).

    **Example:**

    ```python
    pfgm = dd.PFGMPP(D=128.0)
    x_init = pfgm.prior_sample(key, (512, 2))
    field = dd.PFGMPPEmpiricalField(pfgm, data)
    x = dd.solve(dd.Heun(), field.denoise, pfgm.path, x_init, num_steps=40,
                 parameterization="data")
    ```
    """

    D: float = eqx.field(static=True)
    sigma_min: float = eqx.field(default=0.002, static=True)
    sigma_max: float = eqx.field(default=80.0, static=True)

    def __check_init__(self):
        if isinstance(self.D, bool) or not isinstance(self.D, (int, float, np.number)):
            raise TypeError(f"`D` must be a number, got {type(self.D).__name__}.")
        if not (math.isfinite(float(self.D)) and float(self.D) > 0):
            raise ValueError(
                f"`D` (the augmentation dimension) must be finite and > 0, got {self.D}."
            )
        if not (0 < float(self.sigma_min) < float(self.sigma_max) < math.inf):
            raise ValueError(
                "`sigma_min` and `sigma_max` must satisfy 0 < sigma_min < sigma_max < inf, got "
                f"{self.sigma_min}, {self.sigma_max}."
            )

    @property
    def path(self) -> EDM:
        """The EDM path on which the PFGM++ ODE is solved (`sigma` is the time)."""
        return EDM(t_data=float(self.sigma_min), t_noise=float(self.sigma_max))

    def radius(self, sigma: ScalarLike) -> Array:
        """`r = sigma sqrt(D)`, the kernel's scale in PFGM++'s own coordinates."""
        return jnp.asarray(sigma) * math.sqrt(float(self.D))

    def sample_radius(self, key: Key, sigma: ScalarLike, dim: int, shape=()) -> Array:
        """Draws of `|x - y|` under the kernel in `R^dim`: `r sqrt(G_N / G_D)` with independent
        `G_N ~ Gamma(dim / 2)` and `G_D ~ Gamma(D / 2)` (so `R^2 / r^2` is BetaPrime)."""
        dtype = jnp.result_type(float)
        k1, k2 = jax.random.split(key)
        g_n = jax.random.gamma(k1, 0.5 * dim, shape, dtype)
        g_d = jax.random.gamma(k2, 0.5 * float(self.D), shape, dtype)
        return self.radius(jnp.asarray(sigma, dtype)) * jnp.sqrt(g_n / g_d)

    def perturb(self, key: Key, y: Array, sigma: ScalarLike) -> Array:
        """One kernel draw `x ~ p_sigma(. | y)` per row of `y` (shape `(batch, dim)`);
        `sigma` is a number or one per row."""
        y = jnp.asarray(y)
        if y.ndim != 2:
            raise ValueError(f"`y` must have shape (batch, dim), got {y.shape}.")
        n, dim = y.shape
        k1, k2 = jax.random.split(key)
        sigma = jnp.broadcast_to(jnp.asarray(sigma, y.dtype), (n,))
        radius = jax.vmap(lambda k, s: self.sample_radius(k, s, dim))(
            jax.random.split(k1, n), sigma
        )
        u = jax.random.normal(k2, y.shape, y.dtype)
        u = u / jnp.linalg.norm(u, axis=1, keepdims=True)
        return y + radius.astype(y.dtype)[:, None] * u

    def kernel_log_density(self, x: Point, y: Point, sigma: ScalarLike) -> Scalar:
        """The normalized `log p_sigma(x | y)` for ONE point `x` in `R^N`:
        `log Gamma((N+D)/2) - log Gamma(D/2) - (N/2) log(pi r^2) - (N+D)/2 log(1 + |x-y|^2/r^2)`."""
        x = jnp.asarray(x)
        n = x.size
        r2 = self.radius(sigma) ** 2
        d2 = jnp.sum((x - y) ** 2)
        log_c = _log_normalizer(n, self.D).astype(x.dtype)
        return log_c - 0.5 * n * jnp.log(r2) - 0.5 * (n + self.D) * jnp.log1p(d2 / r2)

    def prior_sample(self, key: Key, shape: tuple[int, int]) -> Array:
        """Kernel draws around the origin at `sigma_max`, shape `(batch, dim)`: the start of
        generation (the data's own offset is negligible there)."""
        dtype = jnp.result_type(float)
        return self.perturb(key, jnp.zeros(shape, dtype), self.sigma_max)


class PFGMPPEmpiricalField(eqx.Module):
    """The exact PFGM++ fields of a finite data set `y_1..y_M` (equal weights): the denoiser

        `E[y | x] = sum_i softmax_i(-(N + D)/2 log(1 + |x - y_i|^2 / r^2)) y_i`,

    and the ODE velocity `dx/dsigma = (x - E[y | x]) / sigma`. As `D -> infinity` the softmax
    weights become `-|x - y_i|^2 / (2 sigma^2)`: [`ClosedFormDiffusion`][] on `EDM`. Run to
    `sigma_min`, it returns training points (it memorizes, as the Gaussian one does).
    Methods take `(t, x)` with `t = sigma` and ONE unbatched `x`.
    """

    pfgm: PFGMPP
    data: Array

    def __init__(self, pfgm: PFGMPP, data):
        if not isinstance(pfgm, PFGMPP):
            raise TypeError(f"`pfgm` must be a PFGMPP, got {type(pfgm).__name__}.")
        self.pfgm = pfgm
        self.data = _check_data(data)

    def denoise(self, t: ScalarLike, x: Point) -> Point:
        """`E[y | x_sigma = x]` with `sigma = t`."""
        n = self.data.shape[1]
        r2 = self.pfgm.radius(t) ** 2
        d2 = jnp.sum((x - self.data) ** 2, axis=-1)
        logits = -0.5 * (n + self.pfgm.D) * jnp.log1p(d2 / r2)
        return jax.nn.softmax(logits) @ self.data

    def velocity(self, t: ScalarLike, x: Point) -> Point:
        """`dx/dsigma = (x - E[y | x]) / sigma`."""
        return (x - self.denoise(t, x)) / t


class PFGMPPLoss(AbstractLoss):
    """Denoising regression under the PFGM++ kernel (the paper's EDM-style training): for data
    `y`, `sigma` log-normal (`log sigma ~ N(p_mean, p_std^2)`, clipped to
    `[sigma_min, sigma_max]`) and `x ~ p_sigma(. | y)`, the model's data prediction at
    `(sigma, x)` is regressed onto `y` with EDM's weight `(sigma^2 + sd^2) / (sigma sd)^2`.
    Its minimiser is `E[y | x]` under the kernel, the field [`solve`][] runs on `pfgm.path`.

    **Fields:** `pfgm` ([`PFGMPP`][]), `p_mean`, `p_std`, `sigma_data` (`sd`).
    """

    pfgm: PFGMPP
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 0.5

    def __call__(self, model, batch, *, key):
        source = _check_model(model)
        if source == "score":
            raise ValueError(
                "a PFGM++ model must be parameterized by 'data', 'velocity' or 'noise': the "
                "EDM score conversion is not the PFGM++ kernel's score."
            )
        batch = jnp.asarray(batch)
        n = batch.shape[0]
        k1, k2 = jax.random.split(key)
        log_s = self.p_mean + self.p_std * jax.random.normal(k1, (n,), batch.dtype)
        sigma = jnp.clip(jnp.exp(log_s), self.pfgm.sigma_min, self.pfgm.sigma_max)
        x = self.pfgm.perturb(k2, batch, sigma)
        path = self.pfgm.path
        sd = self.sigma_data

        def one(y, xi, s):
            pred = path.convert(model(s, xi), s, xi, source=source, target="data")
            return (s**2 + sd**2) / (s * sd) ** 2 * jnp.mean((pred - y) ** 2)

        return jnp.mean(jax.vmap(one)(batch, x, sigma))
