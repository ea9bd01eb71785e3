"""Particle smoothers: backward simulation (FFBSi, exact or by rejection), PaRIS for additive
functionals, and fixed-lag smoothing along the genealogy.

The backward kernel of all of them is `P(J = j | x_{t+1}) ∝ W_t^j m_{t+1}(x_t^j, x_{t+1})`, the
filter's weights at `t` times the transition density into the later state.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from ..._checks import check_choice, check_int
from ..._custom_types import Array, Key
from ...energies._ssm import AbstractBoundedTransition, AbstractProposal, AbstractStateSpaceModel
from .._resampling import resample
from ._filter import (
    FilterHook,
    ParticleFilterResult,
    _nan_to_neg_inf,
    checked_filter,
)

BACKWARD_METHODS = ("exact", "rejection")


def backward_logits(model, particles_t, logw_t, x_next, t_next) -> Array:
    """`log W_t^j + log m_{t+1}(x_t^j, x_next)` over the particles `j` at time `t`."""
    m = jax.vmap(lambda xp: model.transition_log_density(xp, x_next, t_next))(particles_t)
    return logw_t + _nan_to_neg_inf(m.astype(logw_t.dtype))


def _backward_exact(model, particles_t, logw_t, x_next, t_next, key):
    """One backward index per row of `x_next` `(M, ...)`, `O(N)` each."""
    logits = jax.vmap(lambda x: backward_logits(model, particles_t, logw_t, x, t_next))(x_next)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _backward_rejection(model, particles_t, logw_t, x_next, t_next, key, max_tries):
    """Per row of `x_next`: `max_tries` proposals `j ~ W_t` accepted with probability
    `m(x_t^j, x_next) / sup m`, the first acceptance kept; rows with none fall back to the exact
    draw (run only when some row needs it), so the draws stay exact at bounded cost."""
    m_rows = x_next.shape[0]
    k_prop, k_u, k_exact = jax.random.split(key, 3)
    cand = resample(
        logw_t, key=k_prop, scheme="multinomial", num_samples=m_rows * max_tries
    ).reshape(m_rows, max_tries)
    cand = jax.random.permutation(k_prop, cand, axis=1, independent=True)
    log_m = jax.vmap(
        lambda x, js: jax.vmap(lambda j: model.transition_log_density(particles_t[j], x, t_next))(
            js
        )
    )(x_next, cand)
    log_u = jnp.log(jax.random.uniform(k_u, cand.shape, logw_t.dtype))
    accept = log_u < _nan_to_neg_inf(log_m.astype(logw_t.dtype)) - model.transition_log_bound(
        t_next
    )
    first = jnp.argmax(accept, axis=1)
    chosen = jnp.take_along_axis(cand, first[:, None], axis=1)[:, 0]
    ok = jnp.any(accept, axis=1)
    exact = jax.lax.cond(
        jnp.all(ok),
        lambda: chosen,
        lambda: _backward_exact(model, particles_t, logw_t, x_next, t_next, k_exact),
    )
    return jnp.where(ok, chosen, exact)


def backward_sample(
    model,
    particles,
    log_weights,
    key,
    num_samples: int,
    *,
    method: str = "exact",
    max_tries: int = 32,
) -> Array:
    """`num_samples` trajectories `(M, T, *state_shape)` drawn by backward simulation from a
    particle system (`particles (T, N, ...)`, normalized `log_weights (T, N)`)."""
    k_last, k_back = jax.random.split(key)
    j_last = resample(log_weights[-1], key=k_last, scheme="multinomial", num_samples=num_samples)
    x_last = particles[-1, j_last]
    T = particles.shape[0]

    def body(x_next, inputs):
        parts, logw, t_next, k = inputs
        if method == "rejection":
            j = _backward_rejection(model, parts, logw, x_next, t_next, k, max_tries)
        else:
            j = _backward_exact(model, parts, logw, x_next, t_next, k)
        x = parts[j]
        return x, x

    inputs = (particles[:-1], log_weights[:-1], jnp.arange(1, T), jax.random.split(k_back, T - 1))
    _, xs = jax.lax.scan(body, x_last, inputs, reverse=True)
    return jnp.swapaxes(jnp.concatenate([xs, x_last[None]]), 0, 1)


@eqx.filter_jit
def _ffbsi_jit(model, particles, log_weights, key, num_samples, method, max_tries):
    return backward_sample(
        model, particles, log_weights, key, num_samples, method=method, max_tries=max_tries
    )


def ffbsi(
    model: AbstractStateSpaceModel,
    filter_result: ParticleFilterResult,
    *,
    key: Key,
    num_samples: int,
    method: str = "exact",
    max_tries: int = 32,
) -> Array:
    """Forward-filtering backward-simulation: independent draws of whole state trajectories
    from the particle approximation of the smoothing law `p(x_{0:T-1} | y_{0:T-1})`.

    Each draw picks `x_{T-1}` by the final weights, then walks back with `P(J = j) ∝ W_t^j
    m_{t+1}(x_t^j, x_{t+1})`. `method="exact"` evaluates that for every particle (`O(N)` per
    step and draw); `method="rejection"` proposes `j ~ W_t` and accepts with probability
    `m / sup m` (the model must be an
    [`AbstractBoundedTransition`][driftax.energies.AbstractBoundedTransition]), falling back
    to the exact draw after `max_tries` rejections, so the draws stay exact at bounded cost.

    **Arguments:** `model`, `filter_result` (from [`particle_filter`][] on that model),
    `key`, `num_samples` (trajectories), `method`, `max_tries`.

    **Returns:** trajectories of shape `(num_samples, T, *state_shape)`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    model = dx.energies.linear_gaussian_ssm(
        0.9 * jnp.eye(1), jnp.eye(1), jnp.eye(1), jnp.eye(1), jnp.zeros(1), jnp.eye(1)
    )
    _, ys = model.simulate(jax.random.key(0), 30)
    pf = dx.samplers.particle_filter(model, ys, key=jax.random.key(1), num_particles=100)
    paths = dx.samplers.ffbsi(model, pf, key=jax.random.key(2), num_samples=50)
    print(paths.mean(0).shape)  # (30, 1): smoothing means
    ```
    """
    if not isinstance(model, AbstractStateSpaceModel):
        raise TypeError(f"`model` must be an AbstractStateSpaceModel, got {type(model).__name__}.")
    if not isinstance(filter_result, ParticleFilterResult):
        raise TypeError(
            "`filter_result` must be a ParticleFilterResult (from particle_filter), got "
            f"{type(filter_result).__name__}."
        )
    check_int(num_samples, "num_samples")
    check_int(max_tries, "max_tries")
    check_choice(method, "method", BACKWARD_METHODS)
    if method == "rejection" and not isinstance(model, AbstractBoundedTransition):
        raise TypeError(
            "`method='rejection'` needs a bounded transition density: `model` must be an "
            f"AbstractBoundedTransition, got {type(model).__name__}."
        )
    if tuple(filter_result.particles.shape[2:]) != tuple(model.state_shape):
        raise ValueError(
            f"`filter_result` holds states of shape {filter_result.particles.shape[2:]}, but "
            f"`model` has state_shape {model.state_shape}."
        )
    return _ffbsi_jit(
        model,
        filter_result.particles,
        filter_result.log_weights,
        key,
        int(num_samples),
        method,
        int(max_tries),
    )


# ----------------------------------------------------------------------------------------------
# PaRIS


def _zero_initial(functional, x):
    shape = jax.eval_shape(functional, x, x, jnp.asarray(1))
    return jnp.zeros(shape.shape, shape.dtype)


class ParisHook(FilterHook):
    """The PaRIS statistics `τ_t^i` carried with the particles: at each step every new particle
    draws `num_backward` indices from the backward kernel and averages `τ_{t-1}^J + h̃_t`."""

    functional: Callable = eqx.field(static=True)
    initial_functional: Callable | None = eqx.field(static=True)
    num_backward: int = eqx.field(static=True)

    def init(self, model, x0, logw0, key):
        del model, logw0, key
        f0 = self.initial_functional
        if f0 is None:
            tau = jax.vmap(lambda x: _zero_initial(self.functional, x))(x0)
        else:
            tau = jax.vmap(f0)(x0)
        return tau, None

    def step(self, model, state, x_prev, logw_prev, ancestors, x_new, logw_new, t, key):
        del ancestors, logw_new
        tau = state
        n = x_new.shape[0]
        logits = jax.vmap(lambda x: backward_logits(model, x_prev, logw_prev, x, t))(x_new)
        idx = jax.random.categorical(key, logits, axis=-1, shape=(self.num_backward, n))

        def one(i):
            js = idx[:, i]
            h = jax.vmap(lambda j: self.functional(x_prev[j], x_new[i], t))(js)
            return jnp.mean(tau[js] + h.astype(tau.dtype), axis=0)

        return jax.vmap(one)(jnp.arange(n)), None

    def finish(self, state, logw_final):
        w = jnp.exp(logw_final)
        return jnp.tensordot(w, state, axes=1)


class ParisResult(eqx.Module):
    """What [`paris_smoother`][] returns: `estimate` of `E[h(x_{0:T-1}) | y]` for the additive
    functional and the forward `filter` (a [`ParticleFilterResult`][])."""

    estimate: Array
    filter: ParticleFilterResult


def _smoother_pass(model, observations, key, num_particles, hook, proposal, resampling, ess):
    """The forward pass of a smoother: [`checked_filter`][] with its `hook` and the filter
    options a smoother forwards (`proposal`, `resampling`, `ess_threshold`)."""
    return checked_filter(
        model,
        observations,
        key,
        num_particles,
        proposal=proposal,
        resampling=resampling,
        ess_threshold=ess,
        hook=hook,
    )


def _check_functional(functional, initial_functional, num_backward):
    if not callable(functional):
        raise TypeError(
            f"`functional` must be a callable (x_prev, x, t) -> array, got {functional!r}."
        )
    if initial_functional is not None and not callable(initial_functional):
        raise TypeError(
            f"`initial_functional` must be None or a callable x -> array, got "
            f"{initial_functional!r}."
        )
    check_int(num_backward, "num_backward")


def paris_smoother(
    model: AbstractStateSpaceModel,
    observations: Array,
    functional: Callable,
    *,
    key: Key,
    num_particles: int,
    num_backward: int = 2,
    initial_functional: Callable | None = None,
    proposal: AbstractProposal | None = None,
    resampling: str = "systematic",
    ess_threshold: float = 0.5,
) -> ParisResult:
    """PaRIS (Olsson & Westerborn, 2017): forward-only smoothing of an additive functional
    `h(x_{0:T-1}) = h_0(x_0) + Σ_{t≥1} h̃_t(x_{t-1}, x_t)` in one pass of a particle filter,
    with `num_backward` backward draws per particle and step, and memory that does not grow
    with `T`. The estimate is self-normalized, so biased by `O(1/N)`
    ([`ppg_smoother`][] removes most of that bias).

    **Arguments:**

    - `model`, `observations`, `key`, `num_particles`, `proposal`, `resampling`,
      `ess_threshold`: as in [`particle_filter`][].
    - `functional`: `h̃_t(x_prev, x, t)` for `t = 1, ..., T-1`, any array output.
    - `initial_functional`: `h_0(x)` (default zero).
    - `num_backward`: backward draws `Ñ` per particle (2 is the usual choice).

    **Returns:** a [`ParisResult`][].

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    model = dx.energies.linear_gaussian_ssm(
        0.9 * jnp.eye(1), jnp.eye(1), jnp.eye(1), jnp.eye(1), jnp.zeros(1), jnp.eye(1)
    )
    _, ys = model.simulate(jax.random.key(0), 30)
    # E[Σ_t x_{t-1} x_t | y]
    out = dx.samplers.paris_smoother(
        model, ys, lambda xp, x, t: jnp.sum(xp * x), key=jax.random.key(1), num_particles=200
    )
    print(out.estimate)
    ```
    """
    _check_functional(functional, initial_functional, num_backward)
    hook = ParisHook(functional, initial_functional, int(num_backward))
    result, _, estimate = _smoother_pass(
        model, observations, key, num_particles, hook, proposal, resampling, ess_threshold
    )
    return ParisResult(estimate=estimate, filter=result)


# ----------------------------------------------------------------------------------------------
# Fixed-lag smoothing


class FixedLagHook(FilterHook):
    """Carries, for every particle, its ancestors' states over the last `lag` steps."""

    lag: int = eqx.field(static=True)

    def init(self, model, x0, logw0, key):
        del model, key
        window = jnp.broadcast_to(x0, (self.lag + 1, *x0.shape))
        return window, jnp.tensordot(jnp.exp(logw0), window[0], axes=1)

    def step(self, model, state, x_prev, logw_prev, ancestors, x_new, logw_new, t, key):
        del model, x_prev, logw_prev, t, key
        window = jnp.concatenate([state[1:, ancestors], x_new[None]])
        return window, jnp.tensordot(jnp.exp(logw_new), window[0], axes=1)

    def finish(self, state, logw_final):
        return jnp.einsum("n,ln...->l...", jnp.exp(logw_final), state)


class FixedLagResult(eqx.Module):
    """What [`fixed_lag_smoother`][] returns: `smoothed_means` `(T, *state_shape)`, the
    estimates of `E[x_t | y_{0:min(t+lag, T-1)}]`, and the forward `filter`."""

    smoothed_means: Array
    filter: ParticleFilterResult


def fixed_lag_smoother(
    model: AbstractStateSpaceModel,
    observations: Array,
    *,
    key: Key,
    num_particles: int,
    lag: int,
    proposal: AbstractProposal | None = None,
    resampling: str = "systematic",
    ess_threshold: float = 0.5,
) -> FixedLagResult:
    """Fixed-lag smoothing: `E[x_t | y_{0:t+lag}]` from the particles' genealogy `lag` steps
    later (Kitagawa & Sato, 2001), in the same forward pass as the filter. The lag trades the
    genealogy's degeneracy (long lags) against the bias of ignoring later observations (short
    lags); `lag=0` gives the filtering means.

    **Arguments:** as [`particle_filter`][], plus `lag` (an int `>= 0`).

    **Returns:** a [`FixedLagResult`][].

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    model = dx.energies.linear_gaussian_ssm(
        0.9 * jnp.eye(1), jnp.eye(1), jnp.eye(1), jnp.eye(1), jnp.zeros(1), jnp.eye(1)
    )
    _, ys = model.simulate(jax.random.key(0), 30)
    out = dx.samplers.fixed_lag_smoother(
        model, ys, key=jax.random.key(1), num_particles=300, lag=5
    )
    print(out.smoothed_means.shape)  # (30, 1)
    ```
    """
    check_int(lag, "lag", 0)
    hook = FixedLagHook(int(lag))
    result, (out0, outs), final = _smoother_pass(
        model, observations, key, num_particles, hook, proposal, resampling, ess_threshold
    )
    # the output at step s is the estimate for time s - lag; the last `lag` come from the end
    T = result.particles.shape[0]
    outputs = jnp.concatenate([out0[None], outs])
    means = jnp.concatenate([outputs[lag:], final[max(1, lag + 1 - T) :]])
    return FixedLagResult(smoothed_means=means, filter=result)
