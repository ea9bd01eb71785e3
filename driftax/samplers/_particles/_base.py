"""The contract of interacting-particle methods and their driver `run_particles`.

`driftax.sample` runs every chain through `jax.vmap` with no communication between chains, so a
kernel never sees the other chains. Ensemble samplers (ALDI, EKI) and SVGD need the whole
ensemble at every step (its covariance, the kernel interactions), so they are
`AbstractParticleMethod`s acting on ONE ensemble, run by their own compiled driver
`run_particles`. The methods driven by target samples or by a time schedule rather than by an
energy at every step (`mmd_flow`, `mean_field_langevin`, `ensemble_score_sample`) are compiled
functions of the whole ensemble for the same reason.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..._checks import check_int
from ..._custom_types import Array, Key
from ...energies._base import AbstractEnergy
from .._base import Info, all_finite


class ParticleState(eqx.Module):
    """The state of an ensemble of `num_particles` points.

    - `position`: the particles, `(num_particles, *event_shape)`.
    - `log_density`: their log densities, `(num_particles,)`.
    - `score`: their scores (same shape as `position`), or `None` for gradient-free methods.
    - `momentum`: the velocities of kinetic methods, else `None`.
    - `iteration`: the number of steps taken.
    """

    position: Array
    log_density: Array
    score: Array | None
    momentum: Array | None
    iteration: Array


class AbstractParticleMethod(eqx.Module):
    """An interacting-particle method: a map from one ensemble to the next.

    Unlike an `AbstractSampler` (one chain, batched by `vmap`), `init` and `step` act on the
    WHOLE ensemble at once. Run one with [`driftax.samplers.run_particles`][].
    """

    @property
    def uses_score(self) -> bool:
        """Whether `step` evaluates the score of every particle (else it is gradient-free)."""
        return True

    def min_particles(self, dim: int) -> int:
        """The fewest particles the method works with in dimension `dim` (2 by default)."""
        del dim
        return 2

    def init(self, energy: AbstractEnergy, particles: Array) -> ParticleState:
        """The state of the ensemble `particles` (shape `(num_particles, *event_shape)`)."""
        logp, score = evaluate(energy, particles, with_score=self.uses_score)
        return ParticleState(
            position=particles,
            log_density=logp,
            score=score,
            momentum=None,
            iteration=jnp.zeros((), jnp.int32),
        )

    @abc.abstractmethod
    def step(self, energy: AbstractEnergy, state: ParticleState, *, key: Key):
        """One update of the whole ensemble: returns `(new_state, info)` with an `Info` whose
        `num_grad_evals` counts the score evaluations of the step (all particles)."""


def evaluate(energy: AbstractEnergy, x: Array, *, with_score: bool):
    """`(log_density, score)` of every particle of `x` (the score `None` unless asked)."""
    if with_score:
        logp, score = jax.vmap(energy.value_and_score)(x)
        return logp.astype(x.dtype), score.astype(x.dtype)
    return jax.vmap(energy.log_density)(x).astype(x.dtype), None


def particle_info(state: ParticleState, num_grad_evals, **extras) -> Info:
    """The `Info` of an ensemble step: divergent when any particle (or its log density /
    score) is not finite."""
    ok = all_finite(state.position, state.log_density, state.score)
    return Info(
        acceptance_rate=jnp.ones((), state.position.dtype),
        is_divergent=~ok,
        energy_error=jnp.zeros((), state.position.dtype),
        num_grad_evals=jnp.asarray(num_grad_evals, jnp.int32),
        extras=extras,
    )


def check_particles(energy: AbstractEnergy, x0, *, minimum: int, name: str = "x0") -> Array:
    """`x0` as a floating `(num_particles, *event_shape)` array of finite values, with at least
    `minimum` particles; eager `ValueError`s naming `name` otherwise."""
    if not isinstance(energy, AbstractEnergy):
        raise TypeError(f"`energy` must be a driftax AbstractEnergy, got {type(energy).__name__}.")
    x = jnp.asarray(x0)
    event_shape = tuple(energy.event_shape)
    if x.ndim != len(event_shape) + 1 or tuple(x.shape[1:]) != event_shape:
        raise ValueError(
            f"`{name}` must be an ensemble of shape (num_particles, *{event_shape}), "
            f"got shape {tuple(x.shape)}."
        )
    if x.shape[0] < minimum:
        raise ValueError(
            f"`{name}` holds {x.shape[0]} particles; this method needs at least {minimum} "
            f"(`num_particles` >= {minimum} in dimension {energy.dim})."
        )
    x = x.astype(energy.dtype if jnp.issubdtype(x.dtype, jnp.floating) else energy.dtype)
    if not np.all(np.isfinite(np.asarray(x))):
        raise ValueError(f"`{name}` must be finite.")
    return x


class ParticleResult(eqx.Module):
    """What [`run_particles`][] returns.

    - `particles`: the final ensemble, `(num_particles, *event_shape)`.
    - `samples`: the ensemble after warmup every `thin` steps,
      `(num_particles, num_steps // thin, *event_shape)` (the same layout as
      `SampleResult.samples`: particles play the role of chains); `None` with
      `store_samples=False`.
    - `info`: per-step `Info` traces of the sampling steps (`(num_steps,)`) or `None`.
    - `final_state`: the last `ParticleState`.
    - `num_grad_evals`: score evaluations over warmup and sampling, all particles.
    """

    particles: Array
    samples: Array | None
    info: Info | None
    final_state: ParticleState
    num_grad_evals: Array

    @property
    def num_divergent(self) -> int:
        """Steps at which some particle was not finite (sampling phase; needs `info`)."""
        return 0 if self.info is None else int(np.sum(np.asarray(self.info.is_divergent)))


def _scan(method, energy, state, key, num_steps: int, thin: int, store: bool):
    keys = jax.random.split(key, max(num_steps, 1))[:num_steps]

    def one(carry, k):
        state, grads = carry
        state, info = method.step(energy, state, key=k)
        return (state, grads + info.num_grad_evals), (state.position, info)

    if not store:

        def quiet(carry, k):
            carry, (_, info) = one(carry, k)
            return carry, info

        (state, grads), infos = jax.lax.scan(quiet, (state, jnp.zeros((), jnp.int32)), keys)
        return state, grads, None, infos
    (state, grads), (xs, infos) = jax.lax.scan(one, (state, jnp.zeros((), jnp.int32)), keys)
    xs = xs[thin - 1 :: thin]
    return state, grads, jnp.swapaxes(xs, 0, 1), infos


def _run_impl(method, energy, x0, key, num_warmup, num_steps, thin, store):
    k_warm, k_run = jax.random.split(key)
    state = method.init(energy, x0)
    state, g0, _, _ = _scan(method, energy, state, k_warm, num_warmup, 1, False)
    state, g1, samples, infos = _scan(method, energy, state, k_run, num_steps, thin, store)
    return state, g0 + g1, samples, infos


_run_traced = eqx.debug.assert_max_traces(_run_impl, max_traces=None)
_run = eqx.filter_jit(_run_traced)


def run_particles(
    method: AbstractParticleMethod,
    energy: AbstractEnergy,
    x0,
    *,
    key: Key,
    num_steps: int,
    num_warmup: int = 0,
    thin: int = 1,
    store_samples: bool = True,
) -> ParticleResult:
    """Run an interacting-particle method ([`ALDI`][], [`EKI`][], [`SVGD`][]) for `num_warmup + num_steps` steps, compiled once (a second
    call with the same shapes does not retrace).

    Why not `driftax.sample`: the driver runs each chain independently under `jax.vmap`,
    while these methods move every particle using the whole ensemble (its covariance, kernel
    interactions), so one compiled loop here advances the ensemble as one state.

    **Arguments:**

    - `method`: an `AbstractParticleMethod`.
    - `energy`: the target (an `AbstractEnergy`).
    - `x0`: the initial ensemble, `(num_particles, *event_shape)` (ALDI needs at least
      `dim + 1` particles and a non-degenerate spread).
    - `key`: a JAX PRNG key (same key → same result).
    - `num_steps`: steps after warmup (recorded every `thin`-th step).
    - `num_warmup`: steps run first and not recorded.
    - `thin`: record every `thin`-th ensemble (`num_steps` must be a multiple).
    - `store_samples`: keep the recorded ensembles (else `samples` is `None`).

    **Returns:** a [`ParticleResult`][].

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    target = dx.energies.gaussian(jnp.array([1.0, -1.0]))
    x0 = jax.random.normal(jax.random.key(1), (64, 2)) * 0.5 - 3.0
    res = dx.samplers.run_particles(dx.samplers.SVGD(step_size=0.3), target, x0,
                                    key=jax.random.key(0), num_steps=300)
    res.particles.mean(axis=0)  # close to [1, -1]
    ```
    """
    if not isinstance(method, AbstractParticleMethod):
        raise TypeError(
            f"`method` must be a driftax AbstractParticleMethod, got {type(method).__name__}."
        )
    num_steps = check_int(num_steps, "num_steps", 1)
    num_warmup = check_int(num_warmup, "num_warmup", 0)
    thin = check_int(thin, "thin", 1)
    if num_steps % thin:
        raise ValueError(f"`num_steps` ({num_steps}) must be a multiple of `thin` ({thin}).")
    x0 = check_particles(energy, x0, minimum=method.min_particles(energy.dim))
    if not jnp.issubdtype(getattr(key, "dtype", np.float32), jax.dtypes.prng_key):
        raise TypeError(f"`key` must be a typed JAX PRNG key (jax.random.key), got {key!r}.")
    state, grads, samples, infos = _run(
        method, energy, x0, key, num_warmup, num_steps, thin, bool(store_samples)
    )
    return ParticleResult(
        particles=state.position,
        samples=samples,
        info=infos if store_samples else None,
        final_state=state,
        num_grad_evals=grads,
    )


def flat(x: Array) -> Array:
    """`(num_particles, dim)` view of an ensemble `(num_particles, *event_shape)`."""
    return x.reshape(x.shape[0], -1)
