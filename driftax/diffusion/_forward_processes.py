"""Forward processes beyond the zero-mean Gaussian paths: the mean-reverting Ornstein–Uhlenbeck
path towards a mean `mu`, its exact Gaussian-mixture fields, and the centring that lets every
fixed-step solver run on it."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Key, Point, Scalar, ScalarLike, Shape
from ..energies._gaussian import normal_log_density
from ..energies._mixture import GaussianMixture, NoisedGaussianMixture
from ._model import AbstractField, ParameterizedField
from ._path import AbstractPath, Parameterization, _as_time, check_parameterization


def _as_mean(mean) -> Array:
    m = jnp.asarray(mean)
    if not jnp.issubdtype(m.dtype, jnp.floating):
        m = m.astype(jnp.result_type(float))
    return m


class OrnsteinUhlenbeck(AbstractPath):
    """The mean-reverting Ornstein–Uhlenbeck forward process towards a mean `mu`:

    `dx = -theta (x - mu) dt + sigma_inf sqrt(2 theta) dW`, so that
    `x_t = mu + alpha(t) (x_data - mu) + sigma(t) eps` with `alpha(t) = exp(-theta t)` and
    `sigma(t) = sigma_inf sqrt(1 - exp(-2 theta t))`. The limit law is `N(mu, sigma_inf^2 I)`.

    `alpha` and `sigma` are those of the centred process `x - mu`; every method that sees a
    point (`noised`, `prior_sample`, `prior_log_density` and the parameterization conversions)
    accounts for the mean, and [`solve`][] runs its solvers on the centred coordinates, so every
    fixed-step solver, [`DenoisingLoss`][] and [`OrnsteinUhlenbeckMixtureFields`][] accept it
    like any other path. With `mean = 0` and `sigma_inf = 1` it is `VP(beta_min=2 theta,
    beta_max=2 theta)`.

    **Fields:**

    - `mean`: `mu`, a scalar or an array of the event shape (default `0`).
    - `theta`: the mean-reversion rate (> 0, default `1`).
    - `sigma_inf`: the stationary standard deviation (> 0, default `1`).
    - `t_data`, `t_noise`: the ends of generation (defaults `1e-3` and `6`, where
      `alpha = exp(-6) ≈ 0.0025`).

    **Example:**

    ```python
    path = dd.OrnsteinUhlenbeck(mean=jnp.array([3.0, -1.0]))
    x_init = path.prior_sample(key, (512, 2))  # N(mu, I)
    ```
    """

    mean: Array = eqx.field(default=0.0, converter=_as_mean)
    theta: float = 1.0
    sigma_inf: float = 1.0
    t_data: float = 1e-3
    t_noise: float = 6.0

    @property
    def domain(self) -> tuple[float, float]:
        return (0.0, math.inf)

    def alpha(self, t):
        return jnp.exp(-self.theta * _as_time(t))

    def sigma(self, t):
        return self.sigma_inf * jnp.sqrt(-jnp.expm1(-2.0 * self.theta * _as_time(t)))

    def half_log_snr(self, t):
        u = 2.0 * self.theta * _as_time(t)
        # log(alpha / sigma) = -u / 2 - log sigma_inf - log(1 - e^{-u}) / 2
        return -0.5 * u - math.log(self.sigma_inf) - 0.5 * jnp.log(-jnp.expm1(-u))

    def t_from_half_log_snr(self, lam):
        lam = _as_time(lam)
        return jax.nn.softplus(-2.0 * lam - 2.0 * math.log(self.sigma_inf)) / (2.0 * self.theta)

    def centred(self) -> OrnsteinUhlenbeck:
        """The same process for `x - mu` (mean zero)."""
        return OrnsteinUhlenbeck(
            mean=jnp.zeros((), self.mean.dtype),
            theta=self.theta,
            sigma_inf=self.sigma_inf,
            t_data=self.t_data,
            t_noise=self.t_noise,
        )

    # ------------------------------------------------------------------ points (mean aware)

    def noised(self, x_data: Point, noise: Point, t: ScalarLike) -> Point:
        """`mu + alpha(t) (x_data - mu) + sigma(t) noise`."""
        t = _as_time(t)
        return self.mean + self.alpha(t) * (x_data - self.mean) + self.sigma(t) * noise

    def prior_sample(self, key: Key, shape: tuple[int, ...]) -> Array:
        """Draws of `mu + sigma(t_noise) N(0, I)` of shape `shape`."""
        dtype = jnp.result_type(float)
        s = self.sigma(jnp.asarray(self.t_noise, dtype))
        return self.mean.astype(dtype) + s * jax.random.normal(key, shape, dtype)

    def prior_log_density(self, x: Point) -> Scalar:
        """Log density of `N(mu, sigma(t_noise)^2 I)` at ONE point."""
        s = self.sigma(jnp.asarray(self.t_noise, x.dtype))
        return normal_log_density(x - self.mean, scale=s)

    def to_data(self, value: Point, t: ScalarLike, x: Point, source: Parameterization) -> Point:
        check_parameterization(source, "source")
        if source == "data":
            return value
        mu = self.mean
        return AbstractPath.to_data(self, value, t, x - mu, source) + mu

    def from_data(self, data: Point, t: ScalarLike, x: Point, target: Parameterization) -> Point:
        check_parameterization(target, "target")
        if target == "data":
            return data
        mu = self.mean
        return AbstractPath.from_data(self, data - mu, t, x - mu, target)

    def __check_init__(self):
        for name in ("theta", "sigma_inf"):
            v = getattr(self, name)
            if isinstance(v, jax.core.Tracer):
                continue
            v = float(np.asarray(v))
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"`{name}` must be a finite number > 0, got {v}.")
        if isinstance(self.mean, jax.core.Tracer):
            return
        if not bool(jnp.all(jnp.isfinite(self.mean))):
            raise ValueError("`mean` must be finite.")
        if float(self.t_data) <= 0:
            raise ValueError("`t_data` must be > 0 for an OrnsteinUhlenbeck path (sigma(0) = 0).")


# ------------------------------------------------------------------------- solving centred


class _CentredField(eqx.Module):
    """A model on `x` seen as a model on `y = x - mu` (the data prediction shifts by `mu`)."""

    model: AbstractField
    mean: Array

    def __call__(self, t, y):
        out = self.model(t, y + self.mean)
        return out - self.mean if self.model.parameterization == "data" else out


def centre_for_solve(model: ParameterizedField, x_init: Array):
    """`(model, x_init, offset)` for the solver loop: on a path with a mean (an
    [`OrnsteinUhlenbeck`][] path) the model and batch move to centred coordinates, and the
    solution is shifted back by `offset`; other paths pass through with `offset = None`."""
    path = model.path
    if not isinstance(path, OrnsteinUhlenbeck):
        return model, x_init, None
    mean = path.mean.astype(x_init.dtype)
    centred = ParameterizedField(
        field=_CentredField(model=model, mean=mean),
        path=path.centred(),
        parameterization=model.parameterization,
    )
    return centred, x_init - mean, mean


# ----------------------------------------------------------------------------- exact fields


def _shift(mixture: GaussianMixture, delta) -> GaussianMixture:
    return eqx.tree_at(lambda m: m.means, mixture, mixture.means + delta)


class OrnsteinUhlenbeckMixtureFields(eqx.Module):
    """Exact fields of a Gaussian mixture pushed along an [`OrnsteinUhlenbeck`][] path.

    The law of `x_t = mu + alpha (x_data - mu) + sigma eps` is the mixture with means
    `mu + alpha (m_k - mu)` and covariances `alpha^2 C_k + sigma^2 I`, so the log density,
    score, denoiser, noise prediction and probability-flow velocity are closed-form. The
    methods match `driftax.energies.NoisedGaussianMixture` (which covers the zero-mean paths),
    each on `(t, x)` for ONE unbatched `x`.

    **Example:**

    ```python
    exact = dd.OrnsteinUhlenbeckMixtureFields(mixture, path)
    x = dd.solve(dd.UniPC(), exact.score, path, path.prior_sample(key, (512, 2)), num_steps=20)
    ```
    """

    mixture: GaussianMixture
    path: OrnsteinUhlenbeck

    def __check_init__(self):
        if not isinstance(self.path, OrnsteinUhlenbeck):
            raise TypeError(
                f"`path` must be an OrnsteinUhlenbeck path, got {type(self.path).__name__}."
            )
        if not isinstance(self.mixture, GaussianMixture):
            raise TypeError(
                f"`mixture` must be a GaussianMixture, got {type(self.mixture).__name__}."
            )

    def _centred(self) -> NoisedGaussianMixture:
        mu = self.path.mean.astype(self.mixture.means.dtype)
        return NoisedGaussianMixture(_shift(self.mixture, -mu), self.path.centred())

    def _mu(self, x):
        return self.path.mean.astype(jnp.asarray(x).dtype)

    def at(self, t: ScalarLike) -> GaussianMixture:
        """The law of `x_t` (a Gaussian mixture with exact samples and log Z)."""
        return _shift(self._centred().at(t), self.path.mean.astype(self.mixture.means.dtype))

    def log_density(self, t: ScalarLike, x: Point) -> Scalar:
        """Normalized log density of `x_t` at `x`."""
        return self._centred().log_density(t, x - self._mu(x))

    def score(self, t: ScalarLike, x: Point) -> Point:
        """`∇_x log p_t(x)`."""
        return self._centred().score(t, x - self._mu(x))

    def denoise(self, t: ScalarLike, x: Point) -> Point:
        """The denoiser `E[x_data | x_t = x]`."""
        mu = self._mu(x)
        return self._centred().denoise(t, x - mu) + mu

    def noise(self, t: ScalarLike, x: Point) -> Point:
        """The noise prediction `E[eps | x_t = x]`."""
        return self._centred().noise(t, x - self._mu(x))

    def velocity(self, t: ScalarLike, x: Point) -> Point:
        """The probability-flow velocity `dx/dt`."""
        return self._centred().velocity(t, x - self._mu(x))

    def sample(self, key: Key, t: ScalarLike, shape: Shape | int = ()) -> Array:
        """Exact draws of `x_t`."""
        return self.at(t).sample(key, shape)
