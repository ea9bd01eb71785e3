"""Step-size schedules of the stochastic-gradient samplers: a factor on `step_size` at step `t`
(the sampler's own step counter), and whether step `t` injects noise (a sampling step) or not
(an exploration step of a cyclical schedule, which then is a stochastic-gradient ascent step)."""

from __future__ import annotations

import abc

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ..._checks import check_hyper
from ..._custom_types import Array
from .._base import check_int


class AbstractSchedule(eqx.Module):
    """A step-size schedule: `factor(t)` (positive) multiplies the sampler's `step_size` at its
    step `t` (0 at `init`), and `is_sampling(t)` says whether the step injects noise."""

    @abc.abstractmethod
    def factor(self, t: Array) -> Array:
        """The factor on `step_size` at step `t` (an int array), positive."""

    def is_sampling(self, t: Array) -> Array:
        """`True` where step `t` injects noise (every step by default)."""
        return jnp.ones(jnp.shape(t), bool)

    def sampling_mask(self, num_steps: int, *, start: int = 0) -> np.ndarray:
        """A NumPy bool mask over the draws of `num_steps` steps that begin at the sampler's
        step `start` (for `driftax.sample`: `start = num_warmup`): `True` for the draws made by
        a sampling step. Use it to drop the exploration iterates of a cyclical schedule."""
        t = jnp.arange(start, start + check_int(num_steps, "num_steps", 1))
        return np.asarray(self.is_sampling(t))


class ConstantSchedule(AbstractSchedule):
    """The constant factor 1 (the default)."""

    def factor(self, t: Array) -> Array:
        return jnp.ones(jnp.shape(t))


class PolynomialSchedule(AbstractSchedule):
    """`factor(t) = (1 + t / offset)^(-decay)` (Welling & Teh 2011 use `decay` in (0.5, 1]; with
    it the step sizes sum to infinity and their squares do not, so the chain's bias vanishes)."""

    offset: float = eqx.field(static=True, default=100.0)
    decay: float = eqx.field(static=True, default=0.55)

    def __check_init__(self):
        check_hyper(self.offset, "offset")
        check_hyper(self.decay, "decay")

    def factor(self, t: Array) -> Array:
        return (1.0 + jnp.asarray(t) / self.offset) ** (-self.decay)


class CyclicalSchedule(AbstractSchedule):
    """The cyclical cosine schedule of Zhang et al. (2020, cSG-MCMC): cycles of `cycle_length`
    steps, `factor = (cos(π r) + 1)/2` with `r = (t mod cycle_length)/cycle_length` (from 1 down
    towards 0 in each cycle, restarting large to jump to new modes). The first
    `exploration_fraction` of every cycle is exploration (no noise: stochastic-gradient ascent);
    drop those draws with [`sampling_mask`][driftax.samplers.AbstractSchedule.sampling_mask]."""

    cycle_length: int = eqx.field(static=True)
    exploration_fraction: float = eqx.field(static=True, default=0.0)

    def __check_init__(self):
        check_int(self.cycle_length, "cycle_length", 1)
        f = self.exploration_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f < 1.0:
            raise ValueError(f"`exploration_fraction` must be in [0, 1), got {f!r}.")

    def _phase(self, t: Array) -> Array:
        return jnp.mod(jnp.asarray(t), self.cycle_length) / self.cycle_length

    def factor(self, t: Array) -> Array:
        return 0.5 * (jnp.cos(jnp.pi * self._phase(t)) + 1.0)

    def is_sampling(self, t: Array) -> Array:
        return self._phase(t) >= self.exploration_fraction


class TabulatedSchedule(AbstractSchedule):
    """Factors given step by step: `factor(t) = values[min(t, len(values) - 1)]` (the last one
    is kept after the table ends). Every value must be positive and finite."""

    values: Array

    def __check_init__(self):
        arr = np.asarray(self.values, dtype=float)
        if arr.ndim != 1 or arr.shape[0] < 1:
            raise ValueError(f"`values` must be a non-empty 1-D array, got shape {arr.shape}.")
        check_hyper(arr, "values")

    def factor(self, t: Array) -> Array:
        values = jnp.asarray(self.values)
        return values[jnp.minimum(jnp.asarray(t), values.shape[0] - 1)]
