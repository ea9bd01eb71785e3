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


class LotkaVolterraSSM(AbstractBoundedTransition):
    """The stochastic Lotka–Volterra predator–prey model on log-populations (build it with
    [`lotka_volterra_ssm`][]).

    The log-populations `z = (log prey, log predators)` follow the Itô SDE of the
    multiplicative-noise predator–prey system,
    `dz = (α - β e^{z_2} - σ²/2, δ e^{z_1} - γ - σ²/2) dt + σ dW`, discretized by
    Euler–Maruyama with `num_substeps` steps of `interval / num_substeps` per observation
    interval. A state is the whole sub-step path of one interval, shape `(num_substeps, 2)`,
    its last row the log-populations at the observation time, so the transition density (a
    product of Gaussian Euler steps) is exact and bounded. Observations are the
    log-populations plus `N(0, observation_sd²)` noise: log-normal noisy counts on the log
    scale."""

    prey_growth: Array
    predation: Array
    predator_death: Array
    predator_growth: Array
    volatility: Array
    observation_sd: Array
    initial_mean: Array
    initial_sd: Array
    interval: float = eqx.field(static=True)
    num_substeps: int = eqx.field(static=True)
    state_shape: Shape = eqx.field(static=True)
    observation_shape: Shape = eqx.field(static=True)

    @property
    def _dt(self) -> float:
        return self.interval / self.num_substeps

    def euler_mean(self, z: Array) -> Array:
        """The mean of one Euler–Maruyama sub-step from the log-populations `z` (shape `(2,)`):
        `z + dt · drift(z)`."""
        half_var = 0.5 * self.volatility**2
        drift = jnp.stack(
            [
                self.prey_growth - self.predation * jnp.exp(z[1]) - half_var,
                self.predator_growth * jnp.exp(z[0]) - self.predator_death - half_var,
            ]
        )
        return z + self._dt * drift.astype(z.dtype)

    def _step_sd(self):
        return self.volatility * math.sqrt(self._dt)

    def _path(self, key: Key, z0: Array, num: int) -> Array:
        """`num` Euler sub-steps from `z0`: shape `(num, 2)`."""

        def body(z, k):
            noise = jax.random.normal(k, (2,), z.dtype)
            z_new = self.euler_mean(z) + self._step_sd() * noise
            return z_new, z_new

        _, zs = jax.lax.scan(body, z0, jax.random.split(key, num))
        return zs

    def _path_log_density(self, z0: Array, path: Array) -> Scalar:
        """`Σ_k log N(path_k; euler_mean(path_{k-1}), σ² dt I)` with `path_{-1} = z0`."""
        starts = jnp.concatenate([z0[None], path[:-1]])
        means = jax.vmap(self.euler_mean)(starts)
        return normal_log_density(path, means, self._step_sd())

    def initial_sample(self, key):
        k0, k_path = jax.random.split(key)
        noise = jax.random.normal(k0, (2,), self._dtype)
        z0 = self.initial_mean + self.initial_sd * noise
        rest = self._path(k_path, z0, self.num_substeps - 1)
        return jnp.concatenate([z0[None], rest])

    def initial_log_density(self, x):
        lp = normal_log_density(x[0], self.initial_mean, self.initial_sd)
        if self.num_substeps == 1:
            return lp
        return lp + self._path_log_density(x[0], x[1:])

    def transition_sample(self, key, x_prev, t):
        del t
        return self._path(key, x_prev[-1], self.num_substeps)

    def transition_log_density(self, x_prev, x, t):
        del t
        return self._path_log_density(x_prev[-1], x)

    def transition_log_bound(self, t):
        del t
        var = self.volatility**2 * self._dt
        return -self.num_substeps * jnp.log(2 * jnp.pi * var)

    def observation_sample(self, key, x, t):
        del t
        noise = jax.random.normal(key, (2,), jnp.result_type(x))
        return x[-1] + self.observation_sd * noise

    def observation_log_density(self, x, y, t):
        del t
        return normal_log_density(y, x[-1], self.observation_sd)

    @property
    def _dtype(self):
        return jnp.result_type(self.initial_mean)


def lotka_volterra_ssm(
    prey_growth: float | Array = 1.0,
    predation: float | Array = 0.05,
    predator_death: float | Array = 1.0,
    predator_growth: float | Array = 0.02,
    volatility: float | Array = 0.1,
    observation_sd: float | Array = 0.2,
    *,
    initial_mean=(math.log(75.0), math.log(20.0)),
    initial_sd=(0.1, 0.1),
    interval: float = 0.5,
    num_substeps: int = 4,
) -> LotkaVolterraSSM:
    """A stochastic Lotka–Volterra predator–prey state-space model on log-populations (see
    [`LotkaVolterraSSM`][]): with prey `P` and predators `Q`,
    `dP = (α P - β P Q) dt + σ P dW_1`, `dQ = (δ P Q - γ Q) dt + σ Q dW_2`, written for
    `z = (log P, log Q)` and discretized by Euler–Maruyama with `num_substeps` sub-steps per
    observation `interval`; observations `y_t = z(t · interval) + N(0, observation_sd² I)`.
    The deterministic system cycles around `(log(γ/δ), log(α/β))` with period near `2π/√(αγ)`.

    **Arguments:**

    - `prey_growth` `α`, `predation` `β`, `predator_death` `γ`, `predator_growth` `δ`,
      `volatility` `σ`, `observation_sd`: positive scalars; they may be traced (build the
      model from parameters inside `jit`, e.g. for [`PMMH`][driftax.samplers.PMMH]).
    - `initial_mean`, `initial_sd`: the law `N(initial_mean, diag(initial_sd²))` of the first
      sub-step of `x_0` (log-populations, shape `(2,)`).
    - `interval`: time between observations; `num_substeps`: Euler steps per interval (a state
      has shape `(num_substeps, 2)`).

    **Example:**

    ```python
    import jax
    import driftax as dx

    model = dx.energies.lotka_volterra_ssm()
    states, ys = model.simulate(jax.random.key(0), 25)
    print(states.shape, ys.shape)  # (25, 4, 2) (25, 2)
    ```
    """
    scalars = {
        "prey_growth": prey_growth,
        "predation": predation,
        "predator_death": predator_death,
        "predator_growth": predator_growth,
        "volatility": volatility,
        "observation_sd": observation_sd,
    }
    for name, v in scalars.items():
        check_hyper(v, name)
        if jnp.ndim(v) != 0:
            raise ValueError(f"`{name}` must be a scalar, got shape {jnp.shape(v)}.")
    check_hyper(interval, "interval")
    if isinstance(interval, jax.core.Tracer):
        raise TypeError("`interval` must be a concrete float (it fixes the Euler step).")
    num_substeps = check_int(num_substeps, "num_substeps")
    m0, s0 = jnp.asarray(initial_mean), jnp.asarray(initial_sd)
    for name, v in (("initial_mean", m0), ("initial_sd", s0)):
        if v.shape != (2,):
            raise ValueError(f"`{name}` must have shape (2,), got {v.shape}.")
    if not isinstance(initial_mean, jax.core.Tracer) and not np.all(
        np.isfinite(np.asarray(initial_mean, dtype=float))
    ):
        raise ValueError("`initial_mean` must be finite.")
    check_hyper(initial_sd, "initial_sd")
    arrs = {k: jnp.asarray(v) for k, v in scalars.items()}
    dtype = jnp.result_type(*arrs.values(), m0, s0, float)
    arrs = {k: v.astype(dtype) for k, v in arrs.items()}
    return LotkaVolterraSSM(
        **arrs,
        initial_mean=m0.astype(dtype),
        initial_sd=s0.astype(dtype),
        interval=float(interval),
        num_substeps=num_substeps,
        state_shape=(num_substeps, 2),
        observation_shape=(2,),
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


# the fixed Lotka–Volterra inference problem (data and reference shipped under `data/`)
LV_DATA_FILE = "lotka_volterra_data.npz"
LV_REFERENCE_FILE = "lotka_volterra_reference.npz"
LV_SEED = 20261207
LV_NUM_STEPS = 25
LV_TRUE_THETA = (0.0, 0.0)  # log prey_growth, log predator_death: α = γ = 1
LV_PRIOR_SD = 0.5


def lotka_volterra_model_fn(theta: Array) -> LotkaVolterraSSM:
    """The parameterization of [`lotka_volterra_problem`][]: `θ = (log prey_growth,
    log predator_death)`, every other argument of [`lotka_volterra_ssm`][] at its default."""
    return lotka_volterra_ssm(prey_growth=jnp.exp(theta[0]), predator_death=jnp.exp(theta[1]))


def simulate_lotka_volterra_data() -> tuple[np.ndarray, np.ndarray]:
    """`(states, observations)` of the shipped data set, simulated afresh in float64 from
    `jax.random.key(LV_SEED)` at `θ = LV_TRUE_THETA` (the shipped file is this output)."""
    with jax.enable_x64(True):
        model = lotka_volterra_model_fn(jnp.asarray(LV_TRUE_THETA, jnp.float64))
        xs, ys = model.simulate(jax.random.key(LV_SEED), LV_NUM_STEPS)
        return np.asarray(xs), np.asarray(ys)


class LotkaVolterraProblem(eqx.Module):
    """A fixed parameter-inference problem on the stochastic Lotka–Volterra model (build it with
    [`lotka_volterra_problem`][]).

    **Fields:** `model_fn` ([`lotka_volterra_model_fn`][]), `prior` (an energy on θ),
    `observations` `(25, 2)`, the simulated truth `states` `(25, 4, 2)` and `true_theta`, and
    the reference posterior of θ from a long PMMH run: `reference_mean`, `reference_sd`, their
    Monte Carlo standard errors `reference_mcse_mean`, `reference_mcse_sd`, and
    `reference_info` (run settings and diagnostics), or `None` without the reference."""

    model_fn: Callable = eqx.field(static=True)
    prior: AbstractEnergy
    observations: Array
    states: Array
    true_theta: Array
    reference_mean: Array | None
    reference_sd: Array | None
    reference_mcse_mean: Array | None
    reference_mcse_sd: Array | None
    reference_info: dict | None = eqx.field(static=True)

    def posterior(self) -> StateSpacePosterior:
        """The joint posterior energy of `[θ, states]` ([`state_space_posterior`][])."""
        return state_space_posterior(self.model_fn, self.prior, self.observations)


def lotka_volterra_problem(with_reference: bool = True) -> LotkaVolterraProblem:
    """The shipped stochastic Lotka–Volterra inference problem: 25 noisy observations of both
    log-populations (every 0.5 time units, 4 Euler sub-steps each) simulated at
    `prey_growth = predator_death = 1` (data file `lotka_volterra_data.npz`); the parameters
    `θ = (log prey_growth, log predator_death)` have the prior `N(0, 0.5² I)`, the other rates
    are fixed at the defaults of [`lotka_volterra_ssm`][].

    The reference posterior moments of θ (`lotka_volterra_reference.npz`) come from a long
    particle marginal Metropolis–Hastings run (`benchmarks/make_lotka_volterra_reference.py`;
    settings, ESS and R-hat in `reference_info` and `driftax/energies/data/README.md`). Arrays
    are float64 when x64 is enabled.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    problem = dx.energies.lotka_volterra_problem()
    print(problem.observations.shape, problem.reference_mean)
    kernel = dx.samplers.PMMH(problem.model_fn, problem.observations, num_particles=64)
    result = dx.sample(kernel, problem.prior, problem.true_theta, key=jax.random.key(0),
                       num_steps=200, num_warmup=100, num_chains=2, progress=False)
    ```
    """
    from ._bayes import _load_npz
    from ._gaussian import gaussian

    data = _load_npz(LV_DATA_FILE)
    dtype = jnp.result_type(float)
    kw: dict = dict.fromkeys(
        ("reference_mean", "reference_sd", "reference_mcse_mean", "reference_mcse_sd")
    )
    info = None
    if with_reference:
        ref = _load_npz(LV_REFERENCE_FILE)
        for name in ("mean", "sd", "mcse_mean", "mcse_sd"):
            kw[f"reference_{name}"] = jnp.asarray(ref[name], dtype)
        info = {
            k: v.item() if v.ndim == 0 else tuple(v.tolist())
            for k, v in ref.items()
            if k not in ("mean", "sd", "mcse_mean", "mcse_sd")
        }
    return LotkaVolterraProblem(
        model_fn=lotka_volterra_model_fn,
        prior=gaussian(jnp.zeros(2, dtype), LV_PRIOR_SD**2 * jnp.eye(2, dtype=dtype)),
        observations=jnp.asarray(data["observations"], dtype),
        states=jnp.asarray(data["states"], dtype),
        true_theta=jnp.asarray(data["theta"], dtype),
        reference_info=info,
        **kw,
    )
