"""Gaussian probability paths `x_t = alpha(t) x_data + sigma(t) noise` and the conversions between
the four parameterizations of a diffusion model (score, noise, data, velocity)."""

from __future__ import annotations

import abc
import math
from typing import Literal, cast

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, ArrayLike, Key, Point, Scalar, ScalarLike
from ..energies._gaussian import normal_log_density

Parameterization = Literal["score", "noise", "data", "velocity"]
PARAMETERIZATIONS: tuple[str, ...] = ("score", "noise", "data", "velocity")


def check_parameterization(parameterization, name: str = "parameterization") -> Parameterization:
    """Raise a clear `ValueError` unless `parameterization` is one of the four known names."""
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"`{name}` must be one of {PARAMETERIZATIONS}, got {parameterization!r}.")
    return cast(Parameterization, parameterization)


def _as_time(t) -> Array:
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.floating):
        t = t.astype(jnp.result_type(float))
    return t


class AbstractPath(eqx.Module):
    """A Gaussian probability path `x_t = alpha(t) x_data + sigma(t) eps`, `eps ~ N(0, I)`.

    Subclasses implement `alpha(t)` and `sigma(t)` and set the two ends of the integration
    interval: `t_data` (near the data, small noise) and `t_noise` (pure noise). Generation runs
    from `t_noise` to `t_data`; time may run either way (diffusions use `t_noise > t_data`).
    Everything else is derived here: time derivatives (by `jax.jvp`), the half log-SNR
    `lambda(t) = log(alpha / sigma)` and its inverse, the path's own reverse-SDE diffusion, and
    the conversions between the four parameterizations of a model: `"score"`
    (`∇ log p_t`), `"noise"` (`E[eps | x_t]`), `"data"` (the denoiser `E[x_data | x_t]`) and
    `"velocity"` (the probability-flow drift `dx/dt`).
    """

    t_data: eqx.AbstractVar[float]
    t_noise: eqx.AbstractVar[float]

    # ----------------------------------------------------------------------------- schedule

    @abc.abstractmethod
    def alpha(self, t: ScalarLike) -> Scalar:
        """Signal coefficient `alpha(t)`."""

    @abc.abstractmethod
    def sigma(self, t: ScalarLike) -> Scalar:
        """Noise coefficient `sigma(t)`."""

    @property
    def domain(self) -> tuple[float, float]:
        """The closed interval of times on which `alpha` and `sigma` are defined."""
        return (0.0, 1.0)

    def alpha_and_derivative(self, t: ScalarLike) -> tuple[Scalar, Scalar]:
        """`(alpha(t), alpha'(t))` by forward-mode autodiff."""
        t = _as_time(t)
        return jax.jvp(self.alpha, (t,), (jnp.ones_like(t),))

    def sigma_and_derivative(self, t: ScalarLike) -> tuple[Scalar, Scalar]:
        """`(sigma(t), sigma'(t))` by forward-mode autodiff."""
        t = _as_time(t)
        return jax.jvp(self.sigma, (t,), (jnp.ones_like(t),))

    def half_log_snr(self, t: ScalarLike) -> Scalar:
        """`lambda(t) = log(alpha(t) / sigma(t))`, increasing from the noise end to the data end."""
        t = _as_time(t)
        return jnp.log(self.alpha(t)) - jnp.log(self.sigma(t))

    def t_from_half_log_snr(self, lam: ArrayLike) -> Array:
        """The time with `half_log_snr(t) = lam` (elementwise), by bisection on `[t_data, t_noise]`.

        Paths with a closed form override this.
        """
        lam = _as_time(lam)
        lo0 = jnp.full(lam.shape, self.t_data, lam.dtype)  # lambda(lo) >= lam
        hi0 = jnp.full(lam.shape, self.t_noise, lam.dtype)  # lambda(hi) <= lam
        num_iters = 64 if lam.dtype == jnp.float64 else 40

        def body(_, carry):
            lo, hi = carry
            mid = 0.5 * (lo + hi)
            above = self.half_log_snr(mid) >= lam
            return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

        lo, hi = jax.lax.fori_loop(0, num_iters, body, (lo0, hi0))
        return 0.5 * (lo + hi)

    def epsilon(self, t: ScalarLike) -> Scalar:
        """The diffusion `eps(t) = g(t)^2 / 2 = sigma(t)^2 |lambda'(t)|` of the path's own SDE.

        With it, `dx = (v + eps s) dtau + sqrt(2 eps) dW` (`tau` running from noise to data,
        `v` the velocity, `s` the score) is the classical reverse-time SDE of the path; any other
        `eps(t) >= 0` has the same marginals.
        """
        t = _as_time(t)
        _, dlam = jax.jvp(self.half_log_snr, (t,), (jnp.ones_like(t),))
        return self.sigma(t) ** 2 * jnp.abs(dlam)

    # ----------------------------------------------------------------------------- sampling

    def noised(self, x_data: Point, noise: Point, t: ScalarLike) -> Point:
        """`alpha(t) x_data + sigma(t) noise`."""
        t = _as_time(t)
        return self.alpha(t) * x_data + self.sigma(t) * noise

    def prior_sample(self, key: Key, shape: tuple[int, ...]) -> Array:
        """Draws of `sigma(t_noise) · N(0, I)` of shape `shape`: the usual start of generation.

        (The exact law at `t_noise` also has the small term `alpha(t_noise) x_data`.)
        """
        dtype = jnp.result_type(float)
        return self.sigma(jnp.asarray(self.t_noise, dtype)) * jax.random.normal(key, shape, dtype)

    def prior_log_density(self, x: Point) -> Scalar:
        """Log density of `N(0, sigma(t_noise)^2 I)` at ONE point (the prior of `prior_sample`)."""
        return normal_log_density(x, scale=self.sigma(jnp.asarray(self.t_noise, x.dtype)))

    # -------------------------------------------------------------------------- conversions

    def to_data(self, value: Point, t: ScalarLike, x: Point, source: Parameterization) -> Point:
        """Convert a model output `value` in parameterization `source` to the denoiser
        `E[x_data | x_t = x]`."""
        check_parameterization(source, "source")
        t = _as_time(t)
        if source == "data":
            return value
        a, s = self.alpha(t), self.sigma(t)
        if source == "noise":
            return (x - s * value) / a
        if source == "score":
            return (x + s**2 * value) / a
        # velocity: v = a' D + s' (x - a D) / s  =>  D = (s v - s' x) / (a' s - s' a)
        (a, da), (s, ds) = self.alpha_and_derivative(t), self.sigma_and_derivative(t)
        return (s * value - ds * x) / (da * s - ds * a)

    def from_data(self, data: Point, t: ScalarLike, x: Point, target: Parameterization) -> Point:
        """Convert a denoiser output `data = E[x_data | x_t = x]` to parameterization `target`."""
        check_parameterization(target, "target")
        t = _as_time(t)
        if target == "data":
            return data
        a, s = self.alpha(t), self.sigma(t)
        if target == "noise":
            return (x - a * data) / s
        if target == "score":
            return (a * data - x) / s**2
        (a, da), (s, ds) = self.alpha_and_derivative(t), self.sigma_and_derivative(t)
        return da * data + ds * (x - a * data) / s

    def convert(
        self,
        value: Point,
        t: ScalarLike,
        x: Point,
        *,
        source: str,
        target: str,
    ) -> Point:
        """Convert a model output at `(t, x)` from parameterization `source` to `target`.

        **Arguments:**

        - `value`: the model output (same shape as `x`).
        - `t`, `x`: where it was evaluated (ONE unbatched point).
        - `source`, `target`: one of `"score"`, `"noise"`, `"data"`, `"velocity"`.

        **Returns:** the output in parameterization `target`.
        """
        source = check_parameterization(source, "source")
        target = check_parameterization(target, "target")
        if source == target:
            return value
        t = _as_time(t)
        # Direct score <-> noise avoids a division by alpha.
        if source == "score" and target == "noise":
            return -self.sigma(t) * value
        if source == "noise" and target == "score":
            return -value / self.sigma(t)
        return self.from_data(self.to_data(value, t, x, source), t, x, target)

    # ---------------------------------------------------------------------------- checks

    def __check_init__(self):
        lo, hi = self.domain
        for name in ("t_data", "t_noise"):
            v = getattr(self, name)
            if isinstance(v, jax.core.Tracer):
                return
            v = float(v)
            if not (math.isfinite(v) and lo <= v <= hi):
                raise ValueError(f"`{name}` must lie in the path's domain [{lo}, {hi}], got {v}.")
        if float(self.t_data) == float(self.t_noise):
            raise ValueError("`t_data` and `t_noise` must differ.")


def _float(v) -> float:
    return float(np.asarray(v))


class _AbstractLinearBetaPath(AbstractPath):
    """VP and sub-VP: `alpha(t) = exp(-B(t) / 2)` with the integrated linear noise rate
    `B(t) = beta_min t + (beta_max - beta_min) t^2 / 2` (`sigma(0) = 0`, so `t_data > 0`)."""

    beta_min: eqx.AbstractVar[float]
    beta_max: eqx.AbstractVar[float]

    def _integral(self, t):
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def alpha(self, t):
        return jnp.exp(-0.5 * self._integral(_as_time(t)))

    def __check_init__(self):
        if not (0 <= _float(self.beta_min) <= _float(self.beta_max) and _float(self.beta_max) > 0):
            raise ValueError(
                "`beta_min` and `beta_max` must satisfy 0 <= beta_min <= beta_max, > 0."
            )
        if _float(self.t_data) <= 0:
            raise ValueError(
                f"`t_data` must be > 0 for a {type(self).__name__} path (sigma(0) = 0)."
            )


class VP(_AbstractLinearBetaPath):
    """Variance-preserving diffusion (DDPM / score SDE) with a linear `beta(t)`.

    `alpha(t) = exp(-B(t) / 2)`, `sigma(t) = sqrt(1 - alpha(t)^2)`,
    `B(t) = beta_min t + (beta_max - beta_min) t^2 / 2`, `t` in `[t_data, t_noise] = [1e-3, 1]`.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_data: float = 1e-3
    t_noise: float = 1.0

    def sigma(self, t):
        return jnp.sqrt(-jnp.expm1(-self._integral(_as_time(t))))

    def half_log_snr(self, t):
        b = self._integral(_as_time(t))
        return -0.5 * b - 0.5 * jnp.log(-jnp.expm1(-b))

    def t_from_half_log_snr(self, lam):
        lam = _as_time(lam)
        b = jax.nn.softplus(-2.0 * lam)
        d = self.beta_max - self.beta_min
        return 2.0 * b / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * d * b))


class SubVP(_AbstractLinearBetaPath):
    """Sub-variance-preserving diffusion (Song et al. 2021): VP's `alpha`, `sigma = 1 - alpha^2`."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_data: float = 1e-3
    t_noise: float = 1.0

    def sigma(self, t):
        return -jnp.expm1(-self._integral(_as_time(t)))


class CosineVP(AbstractPath):
    """Variance-preserving diffusion with the cosine schedule (Nichol & Dhariwal 2021):
    `alpha(t) = cos(pi/2 (t + s)/(1 + s)) / cos(pi/2 s/(1 + s))`, `sigma = sqrt(1 - alpha^2)`.

    `t_noise = 0.9946` keeps `alpha > 0` (as in DPM-Solver).
    """

    s: float = 0.008
    t_data: float = 1e-3
    t_noise: float = 0.9946

    def _log_alpha(self, t):
        c = 0.5 * math.pi / (1.0 + self.s)
        return jnp.log(jnp.cos(c * (t + self.s))) - math.log(math.cos(c * self.s))

    def alpha(self, t):
        return jnp.exp(self._log_alpha(_as_time(t)))

    def sigma(self, t):
        return jnp.sqrt(-jnp.expm1(2.0 * self._log_alpha(_as_time(t))))

    def t_from_half_log_snr(self, lam):
        lam = _as_time(lam)
        log_alpha = -0.5 * jax.nn.softplus(-2.0 * lam)
        c = 0.5 * math.pi / (1.0 + self.s)
        return jnp.arccos(jnp.exp(log_alpha + math.log(math.cos(c * self.s)))) / c - self.s

    def __check_init__(self):
        if _float(self.t_data) <= 0 or _float(self.t_noise) >= 1:
            raise ValueError("a cosine VP path needs 0 < t_data and t_noise < 1.")


class VE(AbstractPath):
    """Variance-exploding diffusion (SMLD / NCSN): `alpha = 1`,
    `sigma(t) = sigma_min (sigma_max / sigma_min)^t` on `[0, 1]`."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t_data: float = 0.0
    t_noise: float = 1.0

    def alpha(self, t):
        return jnp.ones_like(_as_time(t))

    def sigma(self, t):
        t = _as_time(t)
        return self.sigma_min * jnp.exp(t * math.log(self.sigma_max / self.sigma_min))

    def half_log_snr(self, t):
        t = _as_time(t)
        return -(math.log(self.sigma_min) + t * math.log(self.sigma_max / self.sigma_min))

    def t_from_half_log_snr(self, lam):
        lam = _as_time(lam)
        return (-lam - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)

    def __check_init__(self):
        if not (0 < _float(self.sigma_min) < _float(self.sigma_max)):
            raise ValueError("`sigma_min` and `sigma_max` must satisfy 0 < sigma_min < sigma_max.")


class EDM(AbstractPath):
    """The EDM path of Karras et al. (2022): `alpha = 1`, `sigma(t) = t`, from
    `t_noise = sigma_max = 80` to `t_data = sigma_min = 0.002`."""

    t_data: float = 0.002
    t_noise: float = 80.0

    @property
    def domain(self) -> tuple[float, float]:
        return (0.0, math.inf)

    def alpha(self, t):
        return jnp.ones_like(_as_time(t))

    def sigma(self, t):
        return _as_time(t)

    def half_log_snr(self, t):
        return -jnp.log(_as_time(t))

    def t_from_half_log_snr(self, lam):
        return jnp.exp(-_as_time(lam))

    def __check_init__(self):
        if _float(self.t_data) <= 0:
            raise ValueError("`t_data` (sigma_min) must be > 0 for an EDM path.")


class LinearInterpolant(AbstractPath):
    """The linear interpolant / rectified flow / conditional-OT flow-matching path:
    `alpha(t) = 1 - t`, `sigma(t) = t` (noise at `t = 1`, data at `t = 0`).

    `t_noise = 1` exactly (the velocity is finite there; score and noise predictions carry no
    information about the data at `alpha = 0`, so use `t_noise < 1` with those), and
    `t_data = 1e-3`.
    """

    t_data: float = 1e-3
    t_noise: float = 1.0

    def alpha(self, t):
        return 1.0 - _as_time(t)

    def sigma(self, t):
        return _as_time(t)

    def alpha_and_derivative(self, t):
        t = _as_time(t)
        return 1.0 - t, -jnp.ones_like(t)

    def sigma_and_derivative(self, t):
        t = _as_time(t)
        return t, jnp.ones_like(t)

    def t_from_half_log_snr(self, lam):
        return jax.nn.sigmoid(-_as_time(lam))


class TrigonometricInterpolant(AbstractPath):
    """The trigonometric interpolant (also called GVP, generalized variance preserving):
    `alpha(t) = cos(pi t / 2)`, `sigma(t) = sin(pi t / 2)`, noise at `t = 1`, data at `t = 0`."""

    t_data: float = 1e-3
    t_noise: float = 1.0

    def alpha(self, t):
        return jnp.cos(0.5 * math.pi * _as_time(t))

    def sigma(self, t):
        return jnp.sin(0.5 * math.pi * _as_time(t))

    def t_from_half_log_snr(self, lam):
        return jnp.arctan(jnp.exp(-_as_time(lam))) * (2.0 / math.pi)
