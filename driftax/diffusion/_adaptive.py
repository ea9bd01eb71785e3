"""Adaptive ODE/SDE solves and probability-flow likelihoods through diffrax (not re-written).

Time runs in `tau = direction * t`, `direction = sign(t_data - t_noise)`, so diffrax always
integrates forwards from the noise end to the data end (and back, for likelihoods).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax
import numpy as np

from .._custom_types import Array, Key
from .._divergence import integrate_with_divergence, sample_probes
from ._path import AbstractPath
from ._solve import _checked_model
from ._solvers import _epsilon_at


class AdaptiveSolution(eqx.Module):
    """The result of [`solve_adaptive`][]`(..., full_output=True)`.

    - `x`: the batch at `t_data`.
    - `num_steps`: steps taken per example (accepted and rejected).
    - `num_accepted_steps`: accepted steps per example.
    - `successful`: per example, whether diffrax reported success.
    """

    x: Array
    num_steps: Array
    num_accepted_steps: Array
    successful: Array


def _controller(rtol, atol, solver):
    if isinstance(solver, diffrax.AbstractAdaptiveSolver) or hasattr(solver, "error_order"):
        return diffrax.PIDController(rtol=rtol, atol=atol)
    return diffrax.ConstantStepSize()


class _Settings(eqx.Module):
    """The diffrax settings of one adaptive solve, checked once: the solver, its step-size
    controller, the initial step `dt0` and step budget, and the path's two ends with the sign
    `direction` that maps `t` to `tau = direction * t`."""

    solver: diffrax.AbstractSolver
    controller: diffrax.AbstractStepSizeController
    dt0: float
    max_steps: int
    t_noise: float
    t_data: float
    direction: float

    @property
    def tau(self) -> tuple[float, float]:
        """`(tau_noise, tau_data)`: the path's ends in integration time."""
        return self.direction * self.t_noise, self.direction * self.t_data


def _settings(path: AbstractPath, solver, rtol, atol, dt0, max_steps) -> _Settings:
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"`rtol` and `atol` must be positive, got {rtol}, {atol}.")
    if not (isinstance(max_steps, int) and max_steps > 0):
        raise ValueError(f"`max_steps` must be a positive int, got {max_steps!r}.")
    dt0 = abs(path.t_noise - path.t_data) / 100 if dt0 is None else dt0
    if not dt0 > 0:
        raise ValueError(f"`dt0` must be positive, got {dt0}.")
    return _Settings(
        solver=solver,
        controller=_controller(rtol, atol, solver),
        dt0=dt0,
        max_steps=max_steps,
        t_noise=path.t_noise,
        t_data=path.t_data,
        direction=1.0 if path.t_data > path.t_noise else -1.0,
    )


def _integrate(terms, settings: _Settings, x):
    """Integrate one flattened point `x` from the noise end to the data end with diffrax;
    return `(final point in x's shape, steps tried, steps accepted, success)` (never raises)."""
    tau0, tau1 = settings.tau
    sol = diffrax.diffeqsolve(
        terms,
        settings.solver,
        tau0,
        tau1,
        settings.dt0,
        x.reshape(-1),
        stepsize_controller=settings.controller,
        max_steps=settings.max_steps,
        throw=False,
    )
    assert sol.ys is not None  # SaveAt(t1=True) by default
    return (
        sol.ys[-1].reshape(x.shape),
        sol.stats["num_steps"],
        sol.stats["num_accepted_steps"],
        sol.result == diffrax.RESULTS.successful,
    )


@eqx.filter_jit
def _adaptive_ode(model, x_init, settings: _Settings):
    shape = x_init.shape[1:]
    direction = settings.direction

    def drift(tau, y, args):
        t = direction * tau
        return direction * model.velocity(t, y.reshape(shape)).reshape(-1)

    return jax.vmap(lambda x: _integrate(diffrax.ODETerm(drift), settings, x))(x_init)


@eqx.filter_jit
def _adaptive_sde(model, x_init, keys, settings: _Settings, epsilon, brownian_tol, levy_area):
    shape = x_init.shape[1:]
    size = int(np.prod(shape)) if shape else 1
    direction = settings.direction

    def drift(tau, y, args):
        t = direction * tau
        v, s = model.get_many(t, y.reshape(shape), ("velocity", "score"))
        eps = _epsilon_at(epsilon, model.path, t)
        return (direction * v + eps * s).reshape(-1)

    def diffusion(tau, y, args):
        t = direction * tau
        eps = _epsilon_at(epsilon, model.path, t)
        return lineax.DiagonalLinearOperator(jnp.full((size,), jnp.sqrt(2.0 * eps), y.dtype))

    def one(x, key):
        tau0, tau1 = settings.tau
        bm = diffrax.VirtualBrownianTree(
            tau0, tau1, tol=brownian_tol, shape=(size,), key=key, levy_area=levy_area
        )
        terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm))
        return _integrate(terms, settings, x)

    return jax.vmap(one)(x_init, keys)


def _solve_adaptive_full(
    field: Callable,
    path: AbstractPath,
    x_init: Array,
    *,
    parameterization: str = "score",
    solver: diffrax.AbstractSolver | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    dt0: float | None = None,
    max_steps: int = 10_000,
    sde: bool = False,
    epsilon: float | Callable | None = None,
    key: Key | None = None,
    brownian_tol: float | None = None,
) -> AdaptiveSolution:
    """[`solve_adaptive`][] with `full_output=True`."""
    model, x_init = _checked_model(field, path, x_init, parameterization)
    if sde:
        if key is None:
            raise ValueError("`key` is required when `sde=True`.")
        solver = diffrax.ShARK() if solver is None else solver
        settings = _settings(path, solver, rtol, atol, dt0, max_steps)
        levy = (
            diffrax.SpaceTimeLevyArea
            if isinstance(solver, diffrax.ShARK | diffrax.SRA1)
            else diffrax.BrownianIncrement
        )
        keys = jax.random.split(key, x_init.shape[0])
        btol = settings.dt0 / 1000 if brownian_tol is None else brownian_tol
        x, n, na, ok = _adaptive_sde(model, x_init, keys, settings, epsilon, btol, levy)
    else:
        solver = diffrax.Tsit5() if solver is None else solver
        settings = _settings(path, solver, rtol, atol, dt0, max_steps)
        x, n, na, ok = _adaptive_ode(model, x_init, settings)
    return AdaptiveSolution(x=x, num_steps=n, num_accepted_steps=na, successful=ok)


def solve_adaptive(
    field: Callable, path: AbstractPath, x_init: Array, *, full_output: bool = False, **kwargs
) -> Array | AdaptiveSolution:
    """Integrate a batch from `t_noise` to `t_data` with an adaptive diffrax solver: the
    probability-flow ODE (default) or, with `sde=True`, the reverse SDE
    `dx = (v + eps s) dtau + sqrt(2 eps) dW`.

    **Arguments:**

    - `field`, `path`, `x_init`, `parameterization`: as in [`solve`][].
    - `solver`: a diffrax solver; default `diffrax.Tsit5()` for the ODE and `diffrax.ShARK()`
      (strong order 1.5 for additive noise) for the SDE. Adaptive solvers get a
      `PIDController(rtol, atol)` (defaults `1e-5`); others take constant steps `dt0`.
    - `dt0`: initial (or constant) step in `tau`; default `|t_noise - t_data| / 100`.
    - `max_steps`: diffrax's step budget per example (default 10 000).
    - `sde`, `epsilon`: SDE mode and its diffusion (`None`: the path's reverse SDE, a number,
      or a callable `t -> eps(t)`); `key` is then required.
    - `brownian_tol`: tolerance of diffrax's `VirtualBrownianTree` (default `dt0 / 1000`).
    - `full_output`: return an [`AdaptiveSolution`][] (per-example step statistics and
      success flags) instead of raising when an example fails.

    **Returns:** the batch at `t_data`, or an [`AdaptiveSolution`][].
    """
    sol = _solve_adaptive_full(field, path, x_init, **kwargs)
    if full_output:
        return sol
    ok = np.asarray(sol.successful)
    if not ok.all():
        raise RuntimeError(
            f"diffrax failed for {int((~ok).sum())} of {ok.size} examples (step budget or "
            "non-finite values); use solve_adaptive(..., full_output=True) to inspect."
        )
    return sol.x


# ------------------------------------------------------------------------------ likelihood


@eqx.filter_jit
def _log_likelihood(model, x, probes, prior_log_density, settings: _Settings, method):
    shape = x.shape[1:]
    exact = method == "exact"

    def velocity(t, z, args):
        return model.velocity(t, z)

    def one(xi, probe):
        # From t_data to t_noise (either direction of time): delta = int_{t_data}^{t_noise} div v.
        y_T, delta = integrate_with_divergence(
            velocity,
            xi,
            settings.t_data,
            settings.t_noise,
            probes=None if exact else probe,
            solver=settings.solver,
            stepsize_controller=settings.controller,
            dt0=settings.direction * -settings.dt0,
            max_steps=settings.max_steps,
        )
        return prior_log_density(y_T.reshape(shape)) + delta

    return jax.vmap(one)(x, probes)


def log_likelihood(
    field: Callable,
    path: AbstractPath,
    x: Array,
    *,
    parameterization: str = "score",
    divergence: Literal["exact", "hutchinson"] = "exact",
    num_probes: int = 1,
    key: Key | None = None,
    prior_log_density: Callable | None = None,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    dt0: float | None = None,
    max_steps: int = 10_000,
) -> Array:
    """Log density of data points at `t_data` under the probability-flow ODE of `field`.

    Integrates `x` from `t_data` to `t_noise` together with `∫ div v dt` (a continuous
    normalizing flow), so `log p(x) = log p_prior(x_T) + ∫_{t_data}^{t_noise} div v(t, x_t) dt`.
    Differentiable (diffrax's checkpointed adjoint).

    **Arguments:**

    - `field`, `path`, `parameterization`: as in [`solve`][].
    - `x`: a batch of points, shape `(batch, *event_shape)`.
    - `divergence`: `"exact"` (Jacobian trace, one JVP per dimension) or `"hutchinson"`
      (unbiased estimate with `num_probes` Rademacher probes held fixed along each solve; needs
      `key`).
    - `prior_log_density`: log density at `t_noise` of ONE point; default
      `path.prior_log_density` (`N(0, sigma(t_noise)^2 I)`).
    - `solver`, `rtol`, `atol`, `dt0`, `max_steps`: diffrax settings (default Tsit5 with a PID
      controller).

    **Returns:** log densities, shape `(batch,)`.
    """
    model, x = _checked_model(field, path, x, parameterization)
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"`divergence` must be 'exact' or 'hutchinson', got {divergence!r}.")
    if divergence == "hutchinson":
        if key is None:
            raise ValueError("`key` is required for divergence='hutchinson'.")
        keys = jax.random.split(key, x.shape[0])
        probes = jax.vmap(
            lambda k: sample_probes(k, x.shape[1:], num_probes=num_probes, dtype=x.dtype)
        )(keys)
    else:
        probes = jnp.zeros((x.shape[0], 1, *x.shape[1:]), x.dtype)
    solver = diffrax.Tsit5() if solver is None else solver
    settings = _settings(path, solver, rtol, atol, dt0, max_steps)
    prior = path.prior_log_density if prior_log_density is None else prior_log_density
    return _log_likelihood(model, x, probes, prior, settings, divergence)
