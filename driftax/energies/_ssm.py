"""State-space models (hidden Markov models on continuous states) and their exact references.

A model is three densities on ONE unbatched state (a vector of shape `state_shape`):

- the initial law `x_0 ~ μ`,
- the transition `x_t ~ m_t(x_{t-1}, ·)` for `t = 1, ..., T-1`,
- the observation `y_t ~ g_t(x_t, ·)` for `t = 0, ..., T-1`,

each with a sampler and a pointwise log density. Particle filters, smoothers and particle MCMC
(`driftax.samplers.particle_filter`, `ParticleGibbs`, `PMMH`, ...) only use these methods. A
proposal (`AbstractProposal`) replaces the transition as the particles' mover in a guided filter;
an auxiliary proposal (`AbstractAuxiliaryProposal`) adds a look-ahead weight.

The linear-Gaussian model carries its exact Kalman filter and Rauch–Tung–Striebel smoother
(`kalman_filter`, `rts_smoother`): the ground truth every particle method is tested against.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

from .._checks import check_hyper, check_int
from .._custom_types import Array, Key, Scalar, Shape
from ._base import AbstractEnergy
from ._gaussian import normal_log_density

_LOG_2PI = math.log(2.0 * math.pi)


class AbstractStateSpaceModel(eqx.Module):
    """A state-space model: initial law, transition kernel and observation density, each with a
    sampler and a log density of ONE unbatched state (shape `state_shape`) and observation
    (shape `observation_shape`). The time index `t` (an int array) lets a model be
    time-inhomogeneous; transitions are indexed by the time of the NEW state (`t >= 1`).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    model = dx.energies.growth_model()
    states, observations = model.simulate(jax.random.key(0), 50)
    print(states.shape, observations.shape)  # (50, 1) (50, 1)
    ```
    """

    state_shape: eqx.AbstractVar[Shape]
    observation_shape: eqx.AbstractVar[Shape]

    @abc.abstractmethod
    def initial_sample(self, key: Key) -> Array:
        """One draw of `x_0` from the initial law."""

    @abc.abstractmethod
    def initial_log_density(self, x: Array) -> Scalar:
        """`log μ(x)` (normalized)."""

    @abc.abstractmethod
    def transition_sample(self, key: Key, x_prev: Array, t: Array) -> Array:
        """One draw of `x_t` given `x_{t-1} = x_prev`."""

    @abc.abstractmethod
    def transition_log_density(self, x_prev: Array, x: Array, t: Array) -> Scalar:
        """`log m_t(x_prev, x)` (normalized in `x`)."""

    @abc.abstractmethod
    def observation_sample(self, key: Key, x: Array, t: Array) -> Array:
        """One draw of `y_t` given `x_t = x`."""

    @abc.abstractmethod
    def observation_log_density(self, x: Array, y: Array, t: Array) -> Scalar:
        """`log g_t(x, y)` (normalized in `y`)."""

    def simulate(self, key: Key, num_steps: int) -> tuple[Array, Array]:
        """Draw `(states, observations)` of `num_steps` time steps: shapes
        `(num_steps, *state_shape)` and `(num_steps, *observation_shape)`."""
        num_steps = check_int(num_steps, "num_steps")
        k0, ky0, key = jax.random.split(key, 3)
        x0 = self.initial_sample(k0)
        y0 = self.observation_sample(ky0, x0, jnp.asarray(0))

        def body(x, inputs):
            k, t = inputs
            kx, ky = jax.random.split(k)
            x_new = self.transition_sample(kx, x, t)
            return x_new, (x_new, self.observation_sample(ky, x_new, t))

        keys = jax.random.split(key, num_steps - 1)
        _, (xs, ys) = jax.lax.scan(body, x0, (keys, jnp.arange(1, num_steps)))
        return jnp.concatenate([x0[None], xs]), jnp.concatenate([y0[None], ys])

    def log_joint(self, states: Array, observations: Array) -> Scalar:
        """`log p(x_{0:T-1}, y_{0:T-1})` of one state trajectory and the observations."""
        ts = jnp.arange(states.shape[0])
        obs = jax.vmap(self.observation_log_density)(states, observations, ts)
        trans = jax.vmap(self.transition_log_density)(states[:-1], states[1:], ts[1:])
        return self.initial_log_density(states[0]) + jnp.sum(trans) + jnp.sum(obs)


class AbstractBoundedTransition(AbstractStateSpaceModel):
    """Capability base: a model whose transition density is bounded, `m_t(x', x) <=
    exp(transition_log_bound(t))` for all `x', x`; rejection-sampling backward simulation
    (`driftax.samplers.ffbsi(..., method="rejection")`) needs it."""

    @abc.abstractmethod
    def transition_log_bound(self, t: Array) -> Scalar:
        """An upper bound of `log m_t(x', x)` over both arguments."""


class AbstractProposal(eqx.Module):
    """A proposal for a guided particle filter: it moves the particles instead of the
    transition, using the observation; the filter corrects by the weight `g m / q`, so the
    proposal must have a log density.

    **Example:** see `LinearGaussianSSM.optimal_proposal`.
    """

    @abc.abstractmethod
    def initial_sample(self, key: Key, y: Array) -> Array:
        """One draw of `x_0` given the first observation."""

    @abc.abstractmethod
    def initial_log_density(self, x: Array, y: Array) -> Scalar:
        """Its log density (normalized)."""

    @abc.abstractmethod
    def sample(self, key: Key, x_prev: Array, y: Array, t: Array) -> Array:
        """One draw of `x_t` given `x_{t-1}` and `y_t`."""

    @abc.abstractmethod
    def log_density(self, x_prev: Array, x: Array, y: Array, t: Array) -> Scalar:
        """Its log density (normalized in `x`)."""


class AbstractAuxiliaryProposal(AbstractProposal):
    """A proposal with a look-ahead: `log_predictive(x_prev, y, t)` approximates
    `log p(y_t | x_{t-1})`; the auxiliary particle filter resamples on the weights times this
    look-ahead and divides it out afterwards (exact look-ahead + optimal proposal = the fully
    adapted filter)."""

    @abc.abstractmethod
    def log_predictive(self, x_prev: Array, y: Array, t: Array) -> Scalar:
        """An approximation of `log p(y_t | x_{t-1} = x_prev)` (any finite function is valid)."""


# ----------------------------------------------------------------------------------------------
# Gaussian helpers


def _mvn_log_density(x: Array, mean: Array, chol: Array) -> Scalar:
    z = jsl.solve_triangular(chol, x - mean, lower=True)
    return (
        -0.5 * jnp.sum(z**2) - jnp.sum(jnp.log(jnp.diagonal(chol))) - 0.5 * x.shape[-1] * _LOG_2PI
    )


def _mvn_sample(key: Key, mean: Array, chol: Array) -> Array:
    return mean + chol @ jax.random.normal(key, mean.shape, mean.dtype)


def _matrix(value, name: str, shape: tuple[int, int] | None = None, *, psd: bool = False):
    arr = np.asarray(value, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D matrix, got shape {arr.shape}.")
    if shape is not None and arr.shape != shape:
        raise ValueError(f"`{name}` must have shape {shape}, got {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` must be finite.")
    if psd:
        if arr.shape[0] != arr.shape[1] or not np.allclose(arr, arr.T, atol=1e-10):
            raise ValueError(f"`{name}` must be a symmetric matrix, got shape {arr.shape}.")
        if np.min(np.linalg.eigvalsh(arr)) <= 0:
            raise ValueError(f"`{name}` must be positive definite.")
    return value


class LinearGaussianSSM(AbstractBoundedTransition):
    """The linear-Gaussian state-space model (build it with [`linear_gaussian_ssm`][]):
    `x_0 ~ N(m_0, P_0)`, `x_t = A x_{t-1} + N(0, Q)`, `y_t = H x_t + N(0, R)`."""

    transition_matrix: Array
    transition_cov: Array
    observation_matrix: Array
    observation_cov: Array
    initial_mean: Array
    initial_cov: Array
    state_shape: Shape = eqx.field(static=True)
    observation_shape: Shape = eqx.field(static=True)

    def _chols(self):
        return (
            jnp.linalg.cholesky(self.initial_cov),
            jnp.linalg.cholesky(self.transition_cov),
            jnp.linalg.cholesky(self.observation_cov),
        )

    def initial_sample(self, key):
        return _mvn_sample(key, self.initial_mean, jnp.linalg.cholesky(self.initial_cov))

    def initial_log_density(self, x):
        return _mvn_log_density(x, self.initial_mean, jnp.linalg.cholesky(self.initial_cov))

    def transition_sample(self, key, x_prev, t):
        del t
        mean = self.transition_matrix @ x_prev
        return _mvn_sample(key, mean, jnp.linalg.cholesky(self.transition_cov))

    def transition_log_density(self, x_prev, x, t):
        del t
        mean = self.transition_matrix @ x_prev
        return _mvn_log_density(x, mean, jnp.linalg.cholesky(self.transition_cov))

    def transition_log_bound(self, t):
        del t
        chol = jnp.linalg.cholesky(self.transition_cov)
        return -jnp.sum(jnp.log(jnp.diagonal(chol))) - 0.5 * self.state_shape[0] * _LOG_2PI

    def observation_sample(self, key, x, t):
        del t
        return _mvn_sample(
            key, self.observation_matrix @ x, jnp.linalg.cholesky(self.observation_cov)
        )

    def observation_log_density(self, x, y, t):
        del t
        return _mvn_log_density(
            y, self.observation_matrix @ x, jnp.linalg.cholesky(self.observation_cov)
        )

    def optimal_proposal(self) -> LinearGaussianOptimalProposal:
        """The locally optimal proposal `p(x_t | x_{t-1}, y_t)` with the exact look-ahead
        `p(y_t | x_{t-1})`: as a guided proposal its weights do not depend on `x_t`; as an
        auxiliary proposal it makes the fully adapted filter.

        **Example:**

        ```python
        import jax, jax.numpy as jnp
        import driftax as dx

        model = dx.energies.linear_gaussian_ssm(
            0.9 * jnp.eye(1), jnp.eye(1), jnp.eye(1), jnp.eye(1), jnp.zeros(1), jnp.eye(1)
        )
        _, ys = model.simulate(jax.random.key(0), 20)
        out = dx.samplers.particle_filter(
            model, ys, key=jax.random.key(1), num_particles=50, proposal=model.optimal_proposal()
        )
        ```
        """
        return LinearGaussianOptimalProposal(self)


def _condition(mean, cov, H, R, y):
    """Condition `N(mean, cov)` on `y = H x + N(0, R)`: the posterior mean / cov and the log
    marginal likelihood of `y`."""
    S = H @ cov @ H.T + R
    chol_s = jnp.linalg.cholesky(S)
    resid = y - H @ mean
    log_lik = _mvn_log_density(y, H @ mean, chol_s)
    gain = jsl.cho_solve((chol_s, True), H @ cov).T
    new_mean = mean + gain @ resid
    new_cov = cov - gain @ S @ gain.T
    return new_mean, 0.5 * (new_cov + new_cov.T), log_lik


class LinearGaussianOptimalProposal(AbstractAuxiliaryProposal):
    """The locally optimal proposal of a [`LinearGaussianSSM`][] (see its `optimal_proposal`)."""

    model: LinearGaussianSSM

    def _initial(self, y):
        m = self.model
        return _condition(m.initial_mean, m.initial_cov, m.observation_matrix, m.observation_cov, y)

    def _step(self, x_prev, y):
        m = self.model
        mean = m.transition_matrix @ x_prev
        return _condition(mean, m.transition_cov, m.observation_matrix, m.observation_cov, y)

    def initial_sample(self, key, y):
        mean, cov, _ = self._initial(y)
        return _mvn_sample(key, mean, jnp.linalg.cholesky(cov))

    def initial_log_density(self, x, y):
        mean, cov, _ = self._initial(y)
        return _mvn_log_density(x, mean, jnp.linalg.cholesky(cov))

    def sample(self, key, x_prev, y, t):
        del t
        mean, cov, _ = self._step(x_prev, y)
        return _mvn_sample(key, mean, jnp.linalg.cholesky(cov))

    def log_density(self, x_prev, x, y, t):
        del t
        mean, cov, _ = self._step(x_prev, y)
        return _mvn_log_density(x, mean, jnp.linalg.cholesky(cov))

    def log_predictive(self, x_prev, y, t):
        del t
        return self._step(x_prev, y)[2]


def linear_gaussian_ssm(
    transition_matrix,
    transition_cov,
    observation_matrix,
    observation_cov,
    initial_mean,
    initial_cov,
) -> LinearGaussianSSM:
    """The linear-Gaussian state-space model: `x_0 ~ N(initial_mean, initial_cov)`,
    `x_{t+1} = A x_t + N(0, Q)` and `y_t = H x_t + N(0, R)` for `t = 0, ..., T-1`.

    Its exact filter and smoother are [`kalman_filter`][] and [`rts_smoother`][].

    **Arguments:**

    - `transition_matrix`: `A`, shape `(d, d)`.
    - `transition_cov`: `Q`, shape `(d, d)`, positive definite.
    - `observation_matrix`: `H`, shape `(p, d)`.
    - `observation_cov`: `R`, shape `(p, p)`, positive definite.
    - `initial_mean`: `m_0`, shape `(d,)`; `initial_cov`: `P_0`, shape `(d, d)`.

    Concrete arguments are validated eagerly (shapes, finiteness, positive definiteness); traced
    ones (a model built from parameters inside `jit`) are only shape-checked.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    model = dx.energies.linear_gaussian_ssm(
        0.9 * jnp.eye(2), 0.5 * jnp.eye(2), jnp.eye(2), jnp.eye(2), jnp.zeros(2), jnp.eye(2)
    )
    states, ys = model.simulate(jax.random.key(0), 100)
    exact = dx.energies.kalman_filter(model, ys)
    print(exact.log_likelihood)
    ```
    """
    args = dict(
        transition_matrix=transition_matrix,
        transition_cov=transition_cov,
        observation_matrix=observation_matrix,
        observation_cov=observation_cov,
        initial_mean=initial_mean,
        initial_cov=initial_cov,
    )
    arrays = {k: jnp.asarray(v) for k, v in args.items()}
    dtype = jnp.result_type(*arrays.values(), float)
    arrays = {k: v.astype(dtype) for k, v in arrays.items()}
    m0 = arrays["initial_mean"]
    if m0.ndim != 1:
        raise ValueError(f"`initial_mean` must be a 1-D vector, got shape {m0.shape}.")
    d = m0.shape[0]
    H = arrays["observation_matrix"]
    if H.ndim != 2 or H.shape[1] != d:
        raise ValueError(f"`observation_matrix` must have shape (p, {d}), got {H.shape}.")
    p = H.shape[0]
    expected = {
        "transition_matrix": (d, d),
        "transition_cov": (d, d),
        "observation_cov": (p, p),
        "initial_cov": (d, d),
    }
    traced = any(isinstance(v, jax.core.Tracer) for v in args.values())
    for name, shape in expected.items():
        if arrays[name].shape != shape:
            raise ValueError(f"`{name}` must have shape {shape}, got {arrays[name].shape}.")
        if not traced:
            _matrix(args[name], name, shape, psd=name.endswith("cov"))
    if not traced:
        for name in ("initial_mean", "observation_matrix"):
            if not np.all(np.isfinite(np.asarray(args[name], dtype=float))):
                raise ValueError(f"`{name}` must be finite.")
    return LinearGaussianSSM(**arrays, state_shape=(d,), observation_shape=(p,))


class GrowthModel(AbstractBoundedTransition):
    """Kitagawa's nonlinear growth model (build it with [`growth_model`][]):
    `x_0 ~ N(0, s_0)`, `x_t = x_{t-1}/2 + 25 x_{t-1}/(1 + x_{t-1}²) + 8 cos(1.2 t) + N(0, s_v)`,
    `y_t = x_t²/20 + N(0, s_w)`; the squared observation makes the filtering law bimodal."""

    transition_variance: Array
    observation_variance: Array
    initial_variance: Array
    state_shape: Shape = eqx.field(static=True)
    observation_shape: Shape = eqx.field(static=True)

    def _mean(self, x_prev, t):
        return x_prev / 2 + 25 * x_prev / (1 + x_prev**2) + 8 * jnp.cos(1.2 * t)

    def initial_sample(self, key):
        return jnp.sqrt(self.initial_variance) * jax.random.normal(key, (1,), self._dtype)

    def initial_log_density(self, x):
        return normal_log_density(x, 0.0, jnp.sqrt(self.initial_variance))

    def transition_sample(self, key, x_prev, t):
        noise = jax.random.normal(key, (1,), jnp.result_type(x_prev))
        return self._mean(x_prev, t) + jnp.sqrt(self.transition_variance) * noise

    def transition_log_density(self, x_prev, x, t):
        return normal_log_density(x, self._mean(x_prev, t), jnp.sqrt(self.transition_variance))

    def transition_log_bound(self, t):
        del t
        return -0.5 * jnp.log(2 * jnp.pi * self.transition_variance)

    def observation_sample(self, key, x, t):
        del t
        noise = jax.random.normal(key, (1,), jnp.result_type(x))
        return x**2 / 20 + jnp.sqrt(self.observation_variance) * noise

    def observation_log_density(self, x, y, t):
        del t
        return normal_log_density(y, x**2 / 20, jnp.sqrt(self.observation_variance))

    @property
    def _dtype(self):
        return jnp.result_type(self.initial_variance)


def growth_model(
    transition_variance=10.0, observation_variance=1.0, initial_variance=5.0
) -> GrowthModel:
    """Kitagawa's univariate nonlinear growth model, the classic particle-filter benchmark:
    `x_t = x_{t-1}/2 + 25 x_{t-1}/(1 + x_{t-1}²) + 8 cos(1.2 t) + N(0, transition_variance)`,
    `y_t = x_t²/20 + N(0, observation_variance)`, `x_0 ~ N(0, initial_variance)`.

    The variances may be traced (build the model from parameters inside `jit`, e.g. for
    [`PMMH`][driftax.samplers.PMMH]).

    **Example:**

    ```python
    import jax
    import driftax as dx

    states, ys = dx.energies.growth_model().simulate(jax.random.key(0), 100)
    ```
    """
    for name, v in (
        ("transition_variance", transition_variance),
        ("observation_variance", observation_variance),
        ("initial_variance", initial_variance),
    ):
        check_hyper(v, name)
    arrs = [jnp.asarray(v) for v in (transition_variance, observation_variance, initial_variance)]
    dtype = jnp.result_type(*arrs, float)
    tv, ov, iv = (a.astype(dtype) for a in arrs)
    return GrowthModel(
        transition_variance=tv,
        observation_variance=ov,
        initial_variance=iv,
        state_shape=(1,),
        observation_shape=(1,),
    )


# ----------------------------------------------------------------------------------------------
# Exact filtering and smoothing of the linear-Gaussian model


class KalmanResult(eqx.Module):
    """The Kalman filter (and, from [`rts_smoother`][], the RTS smoother) of a linear-Gaussian
    model.

    **Fields:** `log_likelihood` (the exact `log p(y_{0:T-1})`), `filtered_means` `(T, d)`,
    `filtered_covs` `(T, d, d)`, `predicted_means` / `predicted_covs` (of `x_t` given
    `y_{0:t-1}`; at `t = 0` the initial law); from the smoother: `smoothed_means`,
    `smoothed_covs` and `smoothed_cross_covs` (`Cov(x_t, x_{t+1} | y)`, shape `(T-1, d, d)`),
    otherwise `None`."""

    log_likelihood: Array
    filtered_means: Array
    filtered_covs: Array
    predicted_means: Array
    predicted_covs: Array
    smoothed_means: Array | None = None
    smoothed_covs: Array | None = None
    smoothed_cross_covs: Array | None = None


def _check_lg(model, observations):
    if not isinstance(model, LinearGaussianSSM):
        raise TypeError(
            f"`model` must be a LinearGaussianSSM (from linear_gaussian_ssm), got "
            f"{type(model).__name__}."
        )
    ys = jnp.asarray(observations)
    if ys.ndim != 2 or ys.shape[1:] != model.observation_shape or ys.shape[0] < 1:
        raise ValueError(
            f"`observations` must have shape (T, {model.observation_shape[0]}) with T >= 1, got "
            f"{ys.shape}."
        )
    return ys.astype(jnp.result_type(model.initial_mean))


def kalman_filter(model: LinearGaussianSSM, observations: Array) -> KalmanResult:
    """The exact filter of a [`LinearGaussianSSM`][] (one `lax.scan`, differentiable in the
    model's matrices): filtering and one-step predictive means / covariances and the exact log
    marginal likelihood. Run it under `jax.enable_x64` for a float64 reference.

    **Arguments:** `model`, `observations` of shape `(T, p)`.

    **Returns:** a [`KalmanResult`][] (the smoother fields `None`).

    **Example:** see [`linear_gaussian_ssm`][].
    """
    ys = _check_lg(model, observations)
    A, Q, H, R = (
        model.transition_matrix,
        model.transition_cov,
        model.observation_matrix,
        model.observation_cov,
    )

    def body(carry, inputs):
        mean, cov, first = carry
        y = inputs
        pred_mean = jnp.where(first, mean, A @ mean)
        pred_cov = jnp.where(first, cov, A @ cov @ A.T + Q)
        f_mean, f_cov, ll = _condition(pred_mean, pred_cov, H, R, y)
        return (f_mean, f_cov, jnp.asarray(False)), (f_mean, f_cov, pred_mean, pred_cov, ll)

    init = (model.initial_mean, model.initial_cov, jnp.asarray(True))
    _, (fm, fc, pm, pc, lls) = jax.lax.scan(body, init, ys)
    return KalmanResult(
        log_likelihood=jnp.sum(lls),
        filtered_means=fm,
        filtered_covs=fc,
        predicted_means=pm,
        predicted_covs=pc,
    )


def rts_smoother(model: LinearGaussianSSM, observations: Array) -> KalmanResult:
    """The Rauch–Tung–Striebel smoother of a [`LinearGaussianSSM`][]: the Kalman filter
    followed by one backward `lax.scan`, giving the exact smoothing means, covariances and lag-one
    cross-covariances `Cov(x_t, x_{t+1} | y_{0:T-1})`.

    **Returns:** a [`KalmanResult`][] with every field set.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    model = dx.energies.linear_gaussian_ssm(
        0.9 * jnp.eye(1), jnp.eye(1), jnp.eye(1), jnp.eye(1), jnp.zeros(1), jnp.eye(1)
    )
    _, ys = model.simulate(jax.random.key(0), 30)
    smooth = dx.energies.rts_smoother(model, ys)
    print(smooth.smoothed_means.shape)  # (30, 1)
    ```
    """
    filt = kalman_filter(model, observations)
    A = model.transition_matrix

    def body(carry, inputs):
        s_mean, s_cov = carry
        f_mean, f_cov, p_mean_next, p_cov_next = inputs
        gain = jsl.solve(p_cov_next, A @ f_cov, assume_a="pos").T
        mean = f_mean + gain @ (s_mean - p_mean_next)
        cov = f_cov + gain @ (s_cov - p_cov_next) @ gain.T
        cross = gain @ s_cov
        return (mean, 0.5 * (cov + cov.T)), (mean, 0.5 * (cov + cov.T), cross)

    last = (filt.filtered_means[-1], filt.filtered_covs[-1])
    inputs = (
        filt.filtered_means[:-1],
        filt.filtered_covs[:-1],
        filt.predicted_means[1:],
        filt.predicted_covs[1:],
    )
    _, (sm, sc, cross) = jax.lax.scan(body, last, inputs, reverse=True)
    return KalmanResult(
        log_likelihood=filt.log_likelihood,
        filtered_means=filt.filtered_means,
        filtered_covs=filt.filtered_covs,
        predicted_means=filt.predicted_means,
        predicted_covs=filt.predicted_covs,
        smoothed_means=jnp.concatenate([sm, last[0][None]]),
        smoothed_covs=jnp.concatenate([sc, last[1][None]]),
        smoothed_cross_covs=cross,
    )


# ----------------------------------------------------------------------------------------------
# Parameters: the joint energy of (θ, states) and the exact marginal energy of θ


class StateSpacePosterior(AbstractEnergy):
    """The joint posterior of parameters and states, `log p(θ) + log p_θ(x_{0:T-1}, y_{0:T-1})`,
    as an energy on one flat vector `[θ, x_0, ..., x_{T-1}]` (so NUTS, flows and every other
    sampler of driftax apply to a parameterized state-space model). Build it with
    [`state_space_posterior`][].

    `prior` is an energy on `θ`; `model_fn(θ)` builds the model (it must trace)."""

    prior: AbstractEnergy
    model_fn: Callable = eqx.field(static=True)
    observations: Array
    num_parameters: int = eqx.field(static=True)
    state_shape: Shape = eqx.field(static=True)
    event_shape: Shape = eqx.field(static=True)

    def split(self, z: Array) -> tuple[Array, Array]:
        """`(θ, states)` of a flat point `z` (states of shape `(T, *state_shape)`)."""
        theta = z[: self.num_parameters].reshape(self.prior.event_shape)
        states = z[self.num_parameters :].reshape(self.observations.shape[0], *self.state_shape)
        return theta, states

    def log_density(self, x):
        theta, states = self.split(x)
        model = self.model_fn(theta)
        return self.prior.log_density(theta) + model.log_joint(states, self.observations)


class KalmanMarginal(AbstractEnergy):
    """The exact marginal posterior of the parameters of a linear-Gaussian model,
    `log p(θ) + log p_θ(y)` by the Kalman filter (differentiable: NUTS runs on it). Build it
    with [`kalman_marginal`][]."""

    prior: AbstractEnergy
    model_fn: Callable = eqx.field(static=True)
    observations: Array
    event_shape: Shape = eqx.field(static=True)

    def log_density(self, x):
        model = self.model_fn(x)
        lp = self.prior.log_density(x)
        ll = kalman_filter(model, self.observations).log_likelihood
        return jnp.where(jnp.isfinite(lp), lp + ll, lp)


def _check_model_fn(model_fn, prior, observations, *, linear: bool = False):
    if not callable(model_fn):
        raise TypeError(f"`model_fn` must be a callable θ -> model, got {model_fn!r}.")
    if not isinstance(prior, AbstractEnergy):
        raise TypeError(f"`prior` must be a driftax AbstractEnergy, got {type(prior).__name__}.")
    theta = jax.ShapeDtypeStruct(prior.event_shape, jnp.result_type(float))
    model = jax.eval_shape(model_fn, theta)
    if not isinstance(model, AbstractStateSpaceModel):
        raise TypeError(
            f"`model_fn` must return an AbstractStateSpaceModel, got {type(model).__name__}."
        )
    if linear and not isinstance(model, LinearGaussianSSM):
        raise TypeError(f"`model_fn` must return a LinearGaussianSSM, got {type(model).__name__}.")
    ys = check_observations(model, observations)
    return model, ys


def check_observations(model: AbstractStateSpaceModel, observations) -> Array:
    """Check `observations` against `model`: shape `(T, *observation_shape)` with `T >= 1`,
    finite when concrete; returns a floating array. The error names `observations`."""
    ys = jnp.asarray(observations)
    expected = tuple(model.observation_shape)
    if ys.ndim != len(expected) + 1 or tuple(ys.shape[1:]) != expected or ys.shape[0] < 1:
        raise ValueError(
            f"`observations` must have shape (T, *observation_shape) = (T, "
            f"{', '.join(map(str, expected))}) with a leading time axis T >= 1, got {ys.shape}."
        )
    if not jnp.issubdtype(ys.dtype, jnp.floating):
        ys = ys.astype(jnp.result_type(float))
    if not isinstance(observations, jax.core.Tracer) and not np.all(
        np.isfinite(np.asarray(observations, dtype=float))
    ):
        raise ValueError("`observations` must be finite (no NaN or inf).")
    return ys


def state_space_posterior(
    model_fn: Callable, prior: AbstractEnergy, observations
) -> StateSpacePosterior:
    """The joint energy of parameters and states of a state-space model (see
    [`StateSpacePosterior`][]): a flat vector `[θ, x_0, ..., x_{T-1}]`.

    **Arguments:** `model_fn` (θ → model, traceable), `prior` (an energy on θ), `observations`
    `(T, *observation_shape)`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    def model_fn(theta):
        return dx.energies.growth_model(jnp.exp(theta[0]), 1.0)

    _, ys = model_fn(jnp.log(jnp.array([10.0]))).simulate(jax.random.key(0), 20)
    joint = dx.energies.state_space_posterior(model_fn, dx.energies.gaussian(jnp.zeros(1)), ys)
    print(joint.event_shape)  # (21,)
    ```
    """
    model, ys = _check_model_fn(model_fn, prior, observations)
    n = int(np.prod(prior.event_shape))
    size = n + ys.shape[0] * int(np.prod(model.state_shape))
    return StateSpacePosterior(
        prior=prior,
        model_fn=model_fn,
        observations=ys,
        num_parameters=n,
        state_shape=tuple(model.state_shape),
        event_shape=(size,),
    )


def kalman_marginal(model_fn: Callable, prior: AbstractEnergy, observations) -> KalmanMarginal:
    """The exact marginal posterior energy of θ for a linear-Gaussian `model_fn` (see
    [`KalmanMarginal`][]): the reference particle MCMC is tested against.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    def model_fn(theta):
        return dx.energies.linear_gaussian_ssm(
            theta[:1, None], jnp.eye(1), jnp.eye(1), jnp.eye(1), jnp.zeros(1), jnp.eye(1)
        )

    _, ys = model_fn(jnp.array([0.8])).simulate(jax.random.key(0), 50)
    posterior = dx.energies.kalman_marginal(model_fn, dx.energies.gaussian(jnp.zeros(1)), ys)
    print(posterior.log_density(jnp.array([0.8])))
    ```
    """
    _, ys = _check_model_fn(model_fn, prior, observations, linear=True)
    return KalmanMarginal(
        prior=prior, model_fn=model_fn, observations=ys, event_shape=tuple(prior.event_shape)
    )
