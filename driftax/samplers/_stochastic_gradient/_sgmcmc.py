"""Stochastic-gradient MCMC on data energies: SGLD, preconditioned SGLD, SGHMC and the
stochastic-gradient Nosé–Hoover thermostat.

Every step uses ONE unbiased minibatch estimate of the score (`batch_size` of the `N` data,
drawn by the step's key; a control variate if the energy carries one). None is
Metropolis-adjusted: the chains are biased, by the step size's discretization error and by the
gradient noise (see `docs/stochastic_gradient.md`). The state caches the minibatch estimate at
its position (the initial state: the exact full-data value and score).
"""

from __future__ import annotations

from typing import ClassVar, cast

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from ..._custom_types import Array, Key
from ...energies._base import AbstractEnergy
from ...energies._data import AbstractDataEnergy, check_batch_size
from .._base import (
    AbstractSampler,
    Info,
    all_finite,
    check_hyper,
    float_leaf,
    init_position,
    select,
    value_and_score_at,
)
from .._random import draws
from ._schedules import AbstractSchedule, ConstantSchedule


class SGState(eqx.Module):
    """The state of a stochastic-gradient chain.

    - `position`; `log_density`, `score`: the minibatch estimates at `position` (exact at the
      initial point);
    - `momentum`: SGHMC / SGNHT momentum (`None` for SGLD);
    - `aux`: the pSGLD second-moment average, the SGNHT thermostat, or the SGHMC estimate of
      the score's variance (`None` otherwise);
    - `count`: the sampler's step counter (drives the schedule).
    """

    position: Array
    log_density: Array
    score: Array
    momentum: Array | None
    aux: Array | None
    count: Array


def _check_batch(value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"`batch_size` must be an int >= 1, got {value!r}.")
    if value < 1:
        raise ValueError(f"`batch_size` must be an int >= 1, got {value!r}.")
    return int(value)


class AbstractSGMCMC(AbstractSampler):
    """Base of the stochastic-gradient samplers: a `step_size`, a minibatch `batch_size`
    (static; checked against the energy's number of data at `init`), sampling `replace`ment,
    and a step-size `schedule`. On a data energy ([`driftax.energies.AbstractDataEnergy`][])
    every step uses a minibatch estimate of the score; on any other energy (a tempered or
    conditioned one, say) the exact score, so the kernels also serve inside SMC or tempering."""

    is_adjusted: ClassVar[bool] = False
    uses_momentum: ClassVar[bool] = False

    step_size: eqx.AbstractVar[Array]
    batch_size: eqx.AbstractVar[int]
    replace: eqx.AbstractVar[bool]
    schedule: eqx.AbstractVar[AbstractSchedule]

    def _check_common(self):
        check_hyper(self.step_size, "step_size")
        _check_batch(self.batch_size)
        if not isinstance(self.schedule, AbstractSchedule):
            raise TypeError(
                f"`schedule` must be a driftax AbstractSchedule, got {type(self.schedule).__name__}."
            )

    def _check_energy(self, energy) -> AbstractEnergy:
        if not isinstance(energy, AbstractEnergy):
            raise TypeError(
                f"`energy` must be a driftax AbstractEnergy, got {type(energy).__name__}."
            )
        if isinstance(energy, AbstractDataEnergy):
            check_batch_size(self.batch_size, energy.num_data)
        return energy

    def data_grads_per_step(self, energy: AbstractDataEnergy) -> int:
        """Per-datum gradients one step evaluates on `energy`."""
        return energy.data_grads_per_estimate(self.batch_size)

    def _init_aux(self, score: Array) -> Array | None:
        return None

    def _wants_variance(self) -> bool:
        return False

    def init(self, energy: AbstractEnergy, x0: Array) -> SGState:
        energy = self._check_energy(energy)
        x0, logp, score = init_position(energy, x0)
        momentum = jnp.zeros_like(x0) if self.uses_momentum else None
        return SGState(
            position=x0,
            log_density=logp,
            score=score,
            momentum=momentum,
            aux=self._init_aux(score),
            count=jnp.zeros((), jnp.int32),
        )

    def _estimate(self, energy: AbstractEnergy, x: Array, key: Key):
        if not isinstance(energy, AbstractDataEnergy):  # no data: the exact score
            logp, score = value_and_score_at(energy, x)
            return logp, score, (jnp.zeros_like(x) if self._wants_variance() else None)
        est = energy.minibatch_estimate(
            x,
            key=key,
            batch_size=self.batch_size,
            replace=self.replace,
            with_variance=self._wants_variance(),
        )
        return est.value, est.score, est.score_variance

    def _schedule(self, count: Array, dtype):
        h = self.step_size.astype(dtype) * self.schedule.factor(count).astype(dtype)
        return h, self.schedule.is_sampling(count).astype(dtype)

    def _langevin_move(self, energy, state, drift: Array, key: Key):
        """The unadjusted Langevin move `y = x + h·drift + √(2h)·ξ` (no noise while the schedule
        says it is not sampling) from `state.position`, shared by [`SGLD`][] and
        [`StructuredSGLD`][]. Returns `(checked energy, x, y, key for the evaluation at y)`."""
        energy = self._check_energy(energy)
        x = state.position
        dtype = jnp.result_type(x)
        h, noise_on = self._schedule(state.count, dtype)
        k_noise, k_eval = jax.random.split(key)
        xi, _ = draws(k_noise, jnp.shape(x), 0, dtype)
        return energy, x, x + h * drift + noise_on * jnp.sqrt(2.0 * h) * xi, k_eval

    def _finish(self, state: SGState, new: SGState) -> tuple[SGState, Info]:
        ok = all_finite(new.position, new.log_density, new.score, new.momentum, new.aux)
        kept = eqx.tree_at(lambda s: s.count, state, new.count)
        if state.momentum is not None:  # bounce back from a non-finite region
            kept = eqx.tree_at(lambda s: s.momentum, kept, -state.momentum)
        dtype = jnp.result_type(state.position)
        info = Info(
            acceptance_rate=ok.astype(dtype),
            is_divergent=~ok,
            energy_error=jnp.zeros((), dtype),
            num_grad_evals=jnp.asarray(1, jnp.int32),
        )
        return select(ok, new, kept), info


class SGLD(AbstractSGMCMC):
    """Stochastic-gradient Langevin dynamics (Welling & Teh 2011):

    `x' = x + h ĝ(x) + √(2h) ξ`,

    with `ĝ` an unbiased minibatch estimate of `∇log π` (`batch_size` data, `N/n`-scaled) and
    `h = step_size · schedule.factor(t)`. Unadjusted: at a fixed step size the stationary law
    is off by `O(h)`, from the Euler discretization and from the gradient noise (whose
    covariance `V` adds `h²V` per step, i.e. a relative variance inflation of about `hV/2`
    over the posterior precision). One minibatch estimate per step.

    **Arguments:** `step_size` (`h`), `batch_size` (`n`, an int in `[1, N]`), `replace`
    (minibatches with replacement; default without), `schedule` (default constant).

    **Example:**

    ```python
    import jax
    import driftax as dx

    design, y = dx.energies.simulate_linear_regression(jax.random.key(0), 1000, 2)
    target = dx.energies.linear_regression(design, y)
    result = dx.sample(dx.samplers.SGLD(step_size=1e-4, batch_size=50), target,
                       target.mean, key=jax.random.key(1), num_steps=500, num_warmup=0,
                       num_chains=2, check_health=False)
    dx.samplers.data_gradient_evaluations(result)  # per chain
    ```
    """

    step_size: Array = eqx.field(converter=float_leaf)
    batch_size: int = eqx.field(static=True, default=32)
    replace: bool = eqx.field(static=True, default=False)
    schedule: AbstractSchedule = eqx.field(default_factory=ConstantSchedule)

    def __check_init__(self):
        self._check_common()

    def step(self, energy: AbstractEnergy, state: SGState, *, key: Key):
        energy, _, y, k_batch = self._langevin_move(energy, state, state.score, key)
        logp, score, _ = self._estimate(energy, y, k_batch)
        new = SGState(y, logp, score, None, None, state.count + 1)
        return self._finish(state, new)


class PreconditionedSGLD(AbstractSGMCMC):
    """Preconditioned SGLD with an RMSprop diagonal (Li, Chen, Chen & Carin 2016, pSGLD):

    `v ← α v + (1 − α) ĝ ⊙ ĝ`, `G = 1 / (λ + √v)`, `x' = x + h G ⊙ ĝ + √(2h G) ⊙ ξ`.

    The drift term `Γ = Σⱼ ∂G/∂xⱼ` of the exact preconditioned dynamics is dropped (as in the
    paper's practical algorithm), which adds a bias that vanishes when `v` changes slowly
    (`decay` near 1). `v` starts at the square of the exact score at the initial point.

    **Arguments:** `step_size`, `batch_size`, `replace`, `schedule`, `decay` (`α`, default
    0.99), `epsilon` (`λ`, default 1e-5).
    """

    step_size: Array = eqx.field(converter=float_leaf)
    batch_size: int = eqx.field(static=True, default=32)
    replace: bool = eqx.field(static=True, default=False)
    schedule: AbstractSchedule = eqx.field(default_factory=ConstantSchedule)
    decay: Array = eqx.field(converter=float_leaf, default=0.99)
    epsilon: Array = eqx.field(converter=float_leaf, default=1e-5)

    def __check_init__(self):
        self._check_common()
        check_hyper(self.epsilon, "epsilon")
        d = np.asarray(self.decay) if not isinstance(self.decay, jax.core.Tracer) else None
        if d is not None and not (0.0 <= float(d) < 1.0):
            raise ValueError(f"`decay` must be in [0, 1), got {float(d)!r}.")

    def _init_aux(self, score: Array) -> Array:
        return score * score

    def step(self, energy: AbstractEnergy, state: SGState, *, key: Key):
        energy = self._check_energy(energy)
        x = state.position
        dtype = jnp.result_type(x)
        h, noise_on = self._schedule(state.count, dtype)
        alpha, lam = self.decay.astype(dtype), self.epsilon.astype(dtype)
        k_noise, k_batch = jax.random.split(key)
        xi, _ = draws(k_noise, jnp.shape(x), 0, dtype)
        g = state.score
        aux = cast(Array, state.aux)  # pSGLD keeps its RMSprop average here
        v = alpha * aux + (1.0 - alpha) * g * g
        precond = 1.0 / (lam + jnp.sqrt(v))
        y = x + h * precond * g + noise_on * jnp.sqrt(2.0 * h * precond) * xi
        logp, score, _ = self._estimate(energy, y, k_batch)
        new = SGState(y, logp, score, None, v, state.count + 1)
        return self._finish(state, new)


class SGHMC(AbstractSGMCMC):
    """Stochastic-gradient Hamiltonian Monte Carlo (Chen, Fox & Guestrin 2014) as an
    underdamped Langevin sampler with minibatch forces, unit mass, split symmetrically
    (BAOAB: half kick, half drift, exact friction/noise step, half drift, half kick):

    `dx = p dt`, `dp = ĝ(x) dt − γ p dt + √(2γ) dW`.

    With exact gradients the stationary bias is `O(h²)`; the minibatch noise (covariance `V`)
    adds `h²V` to the momentum per step, a relative temperature rise of about `hV/(2γ)`: the
    error is then `O(h)` and the friction `γ` damps it. With `noise_estimate=True` the
    injected noise is reduced by the estimated gradient noise (Chen et al.'s `B̂`, estimated
    from the spread of the per-datum gradients of the last minibatch, clipped at zero), which
    removes that first-order term when the estimate is good.

    **Arguments:** `step_size` (`h`), `friction` (`γ`, default 1), `batch_size`, `replace`,
    `schedule`, `noise_estimate` (default `False`).
    """

    step_size: Array = eqx.field(converter=float_leaf)
    friction: Array = eqx.field(converter=float_leaf, default=1.0)
    batch_size: int = eqx.field(static=True, default=32)
    replace: bool = eqx.field(static=True, default=False)
    schedule: AbstractSchedule = eqx.field(default_factory=ConstantSchedule)
    noise_estimate: bool = eqx.field(static=True, default=False)

    uses_momentum: ClassVar[bool] = True

    def _wants_variance(self) -> bool:
        return bool(self.noise_estimate)

    def __check_init__(self):
        self._check_common()
        check_hyper(self.friction, "friction")
        if not isinstance(self.noise_estimate, (bool, np.bool_)):
            raise TypeError(f"`noise_estimate` must be a bool, got {self.noise_estimate!r}.")

    def init(self, energy: AbstractEnergy, x0: Array) -> SGState:
        state = super().init(energy, x0)
        if self.noise_estimate:
            state = eqx.tree_at(
                lambda s: s.aux, state, jnp.zeros_like(state.position), is_leaf=lambda v: v is None
            )
        return state

    def step(self, energy: AbstractEnergy, state: SGState, *, key: Key):
        energy = self._check_energy(energy)
        x, p = state.position, state.momentum
        assert p is not None
        dtype = jnp.result_type(x)
        h, noise_on = self._schedule(state.count, dtype)
        gamma = self.friction.astype(dtype)
        k_noise, k_batch = jax.random.split(key)
        xi, _ = draws(k_noise, jnp.shape(x), 0, dtype)
        p = p + 0.5 * h * state.score
        x = x + 0.5 * h * p
        noise_var = -jnp.expm1(-2.0 * gamma * h)
        if self.noise_estimate:
            noise_var = jnp.maximum(noise_var - h * h * cast(Array, state.aux), 0.0)
        p = jnp.exp(-gamma * h) * p + noise_on * jnp.sqrt(noise_var) * xi
        x = x + 0.5 * h * p
        logp, score, variance = self._estimate(energy, x, k_batch)
        p = p + 0.5 * h * score
        new = SGState(x, logp, score, p, variance, state.count + 1)
        return self._finish(state, new)


class SGNHT(AbstractSGMCMC):
    """The stochastic-gradient Nosé–Hoover thermostat (Ding et al. 2014): SGHMC whose friction
    `ξ` is a dynamic variable that adapts to the (unknown) gradient noise by holding the
    kinetic temperature at 1:

    `p ← p − h ξ p + h ĝ(x) + √(2Ah) η`, `x ← x + h p`, `ξ ← ξ + h (pᵀp/d − 1)`,

    with `A` the injected `diffusion` (`ξ` starts at `A`). Unadjusted: an `O(h)` bias; the
    thermostat absorbs gradient noise of unknown size, but only through one scalar.

    **Arguments:** `step_size`, `diffusion` (`A`, default 1), `batch_size`, `replace`,
    `schedule`.
    """

    step_size: Array = eqx.field(converter=float_leaf)
    diffusion: Array = eqx.field(converter=float_leaf, default=1.0)
    batch_size: int = eqx.field(static=True, default=32)
    replace: bool = eqx.field(static=True, default=False)
    schedule: AbstractSchedule = eqx.field(default_factory=ConstantSchedule)

    uses_momentum: ClassVar[bool] = True

    def __check_init__(self):
        self._check_common()
        check_hyper(self.diffusion, "diffusion")

    def _init_aux(self, score: Array) -> Array:
        return jnp.broadcast_to(self.diffusion.astype(score.dtype), ())

    def step(self, energy: AbstractEnergy, state: SGState, *, key: Key):
        energy = self._check_energy(energy)
        x, p, thermo = state.position, state.momentum, state.aux
        assert p is not None and thermo is not None
        dtype = jnp.result_type(x)
        h, noise_on = self._schedule(state.count, dtype)
        a = self.diffusion.astype(dtype)
        k_noise, k_batch = jax.random.split(key)
        eta, _ = draws(k_noise, jnp.shape(x), 0, dtype)
        p = p - h * thermo * p + h * state.score + noise_on * jnp.sqrt(2.0 * a * h) * eta
        x = x + h * p
        thermo = thermo + h * (jnp.sum(p * p) / p.size - 1.0)
        logp, score, _ = self._estimate(energy, x, k_batch)
        new = SGState(x, logp, score, p, thermo, state.count + 1)
        return self._finish(state, new)


def data_gradient_evaluations(result, *, include_warmup: bool = True) -> np.ndarray:
    """Per-datum gradient evaluations of a `driftax.sample` run on a data energy, per chain:
    for a stochastic-gradient sampler, its steps × the data one minibatch estimate touches
    (twice the batch with a control variate, plus the `N` its reference point cost once); for
    any other sampler, its gradient evaluations × `N`. Both add `N` per chain for the exact
    gradient at the initial point.

    **Arguments:** `result` (a `SampleResult`), `include_warmup` (count warmup steps too).
    """
    energy = result.energy
    if not isinstance(energy, AbstractDataEnergy):
        raise TypeError(
            "`result` must come from a run on a data energy (driftax.energies.AbstractDataEnergy)."
        )
    c = result.counts
    grads = np.asarray(c.num_grad_evals, np.int64)
    if include_warmup:
        grads = grads + np.asarray(c.num_grad_evals_warmup, np.int64)
    big_n = energy.num_data
    sampler = result.initial_sampler
    if isinstance(sampler, AbstractSGMCMC):
        per = sampler.data_grads_per_step(energy)
        setup = big_n if energy.cv is not None else 0
    else:
        per, setup = big_n, 0
    return grads * per + big_n + setup
