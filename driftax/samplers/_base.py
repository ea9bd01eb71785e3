"""The sampler contract: `AbstractSampler`, the states it carries and the `Info` every step reports."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, ClassVar, Literal, overload

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from .._checks import check_hyper as check_hyper
from .._custom_types import Array, Key, PyTree
from ..energies._base import AbstractEnergy, check_event, check_finite
from ._metrics import AbstractMetric

MAX_ENERGY_ERROR = 1000.0
"""An energy error above this (or a non-finite one) marks a step as divergent. `Info.energy_error`
is clipped to `[-MAX_ENERGY_ERROR, MAX_ENERGY_ERROR]` and reads `MAX_ENERGY_ERROR` when the energy
was not finite, so that adaptation statistics stay finite."""


class MCMCState(eqx.Module):
    """The state of a position-only Markov chain (random walk, MALA, HMC, NUTS, ...).

    `log_density` and `score` are those of `position`, carried so that nothing is recomputed.
    Gradient-free samplers carry `score=None`.
    """

    position: Array
    log_density: Array
    score: Array | None


class KineticState(eqx.Module):
    """The state of a kinetic (underdamped) chain: position, momentum, and the cached
    `log_density`/`score` of the position. Also the state the integrators act on."""

    position: Array
    momentum: Array
    log_density: Array
    score: Array


class Info(eqx.Module):
    """What every `step` reports, as arrays (one chain, one step).

    - `acceptance_rate`: Metropolis acceptance probability of the proposal (1 for unadjusted
      samplers, 0 on a divergent step; for NUTS the mean over the trajectory).
    - `is_divergent`: the step hit a non-finite energy, log density or score (NaN, +∞ and -∞
      alike) or an energy error above `MAX_ENERGY_ERROR`; the proposal was rejected (unadjusted
      samplers keep their previous state).
    - `energy_error`: the error in the Hamiltonian (or, for overdamped samplers, minus the
      Metropolis log ratio) of the proposal; the statistic unadjusted step sizes are tuned on.
      Always finite: clipped to `±MAX_ENERGY_ERROR`, and `MAX_ENERGY_ERROR` for a non-finite
      energy.
    - `num_grad_evals`: gradients of the log density evaluated by this step.
    - `extras`: sampler-specific extras (e.g. NUTS tree depth), a dict of arrays.
    """

    acceptance_rate: Array
    is_divergent: Array
    energy_error: Array
    num_grad_evals: Array
    extras: dict = eqx.field(default_factory=dict)


class AbstractSampler(eqx.Module):
    """A Markov kernel targeting `exp(log_density)` of an energy.

    Hyperparameters are fields (array-valued ones, like `step_size`, are leaves so that adapting
    them never recompiles; structural ones are static). The energy is passed to every call, so
    the same kernel can follow a changing target (annealing, SMC).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    target = dx.energies.gaussian(jnp.zeros(2))
    kernel = dx.samplers.MALA(step_size=0.3)
    state = kernel.init(target, jnp.zeros(2))
    state, info = kernel.step(target, state, key=jax.random.key(0))
    ```
    """

    is_adjusted: ClassVar[bool] = True
    """Metropolis-adjusted (exact) or not (biased, tuned on the energy error instead)."""
    default_target_acceptance: ClassVar[float] = 0.8
    """The acceptance rate the step-size adaptation aims at by default (adjusted samplers)."""

    @abc.abstractmethod
    def init(self, energy: AbstractEnergy, x0: Array) -> PyTree:
        """The initial state at ONE unbatched point `x0` (shape `energy.event_shape`)."""

    @abc.abstractmethod
    def step(self, energy: AbstractEnergy, state: PyTree, *, key: Key) -> tuple[PyTree, Info]:
        """One transition: returns `(new_state, info)`.

        **Arguments:**

        - `energy`: the target (an `AbstractEnergy`).
        - `state`: the current state (from `init` or a previous `step`).
        - `key`: a JAX PRNG key.
        """


class AbstractStepSizeSampler(AbstractSampler):
    """Capability base: a sampler with an adaptable `step_size` (a positive floating array
    leaf), which the step-size adaptations (dual averaging) tune."""

    step_size: eqx.AbstractVar[Array]


class AbstractMetricSampler(AbstractSampler):
    """Capability base: a sampler with an adaptable `metric` (an `AbstractMetric`), which the
    windowed adaptation re-estimates from the chains' draws. Subclasses declare the field
    themselves."""

    if TYPE_CHECKING:
        metric: eqx.Module


class AbstractAdaptableSampler(AbstractStepSizeSampler, AbstractMetricSampler):
    """Both capabilities at once, the common case of the gradient-based kernels (HMC, NUTS,
    MALA, the Langevin and microcanonical kernels, ...): an adaptable `step_size` and an
    adaptable `metric`, both checked here (after a subclass's own checks)."""

    def __check_init__(self):
        check_hyper(self.step_size, "step_size")
        if not isinstance(self.metric, AbstractMetric):
            raise TypeError(
                f"`metric` must be an AbstractMetric, got {type(self.metric).__name__}."
            )


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def float_leaf(value):
    """Field converter: a hyperparameter as a floating JAX array (so adapting it never retraces)."""
    if isinstance(value, jax.core.Tracer):
        return value
    if isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jnp.floating):
        return value
    if isinstance(value, (bool, str)) or value is None:
        raise TypeError(f"expected a number, got {value!r}.")
    return jnp.asarray(value, dtype=jnp.result_type(float))


def check_int(value, name: str, minimum: int, maximum: int | None = None) -> int:
    """Eagerly check that `value` is a Python/NumPy int (not a bool) in `[minimum, maximum]`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {value!r}.")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"`{name}` must be an int {bound}, got {value!r}.")
    return int(value)


def check_fraction(value, name: str, *, low_open: bool = True, high_open: bool = True) -> float:
    """Eagerly check that a concrete number lies in the interval (0, 1) (ends open or closed
    as asked). Raises a `ValueError` naming it (a `TypeError` for a non-number)."""
    if isinstance(value, (bool, str, np.bool_)) or value is None:
        raise TypeError(f"`{name}` must be a number, got {value!r}.")
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"`{name}` must be a number, got {value!r}.") from e
    ok = (0.0 < v if low_open else 0.0 <= v) and (v < 1.0 if high_open else v <= 1.0)
    if not (np.isfinite(v) and ok):
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"`{name}` must be in {lo}0, 1{hi}, got {value!r}.")
    return v


def cast_like(x: Array, tree: PyTree) -> PyTree:
    """Cast the floating array leaves of `tree` (outputs, or a whole module such as a flow)
    to the floating dtype of `x` (the position's dtype decides; a no-op when they agree)."""
    dtype = jnp.result_type(x)

    def cast(a):
        if eqx.is_array(a) and jnp.issubdtype(a.dtype, jnp.floating):
            return a.astype(dtype)
        return a

    return jax.tree.map(cast, tree)


def log_density_at(energy: AbstractEnergy, x: Array) -> Array:
    """`energy.log_density(x)` in the dtype of `x`."""
    return energy.log_density(x).astype(jnp.result_type(x))


def value_and_score_at(energy: AbstractEnergy, x: Array) -> tuple[Array, Array]:
    """`energy.value_and_score(x)` in the dtype of `x`."""
    logp, score = energy.value_and_score(x)
    dtype = jnp.result_type(x)
    return logp.astype(dtype), score.astype(dtype)


@overload
def init_position(
    energy: AbstractEnergy, x0, *, with_score: Literal[True] = True
) -> tuple[Array, Array, Array]: ...


@overload
def init_position(
    energy: AbstractEnergy, x0, *, with_score: bool
) -> tuple[Array, Array, Array | None]: ...


def init_position(
    energy: AbstractEnergy, x0, *, with_score: bool = True
) -> tuple[Array, Array, Array | None]:
    """Check `x0` against the energy and return `(x0, log_density, score)`, all in `x0`'s
    floating dtype (the position's dtype decides; an integer `x0` becomes JAX's default
    float)."""
    if not isinstance(energy, AbstractEnergy):
        raise TypeError(f"`energy` must be a driftax AbstractEnergy, got {type(energy).__name__}.")
    x0 = check_event(x0, energy.event_shape, "x0")
    if not isinstance(x0, jax.core.Tracer):
        check_finite(x0, "x0")
    if with_score:
        logp, score = value_and_score_at(energy, x0)
        return x0, logp, score
    return x0, log_density_at(energy, x0), None


def safe_energy_error(delta: Array) -> Array:
    """The energy error reported in `Info`: clipped to `±MAX_ENERGY_ERROR`, and
    `MAX_ENERGY_ERROR` where it is not finite (NaN, +∞ or -∞), so that adaptation statistics
    and summaries stay finite."""
    cap = jnp.asarray(MAX_ENERGY_ERROR, jnp.result_type(delta))
    return jnp.where(jnp.isfinite(delta), jnp.clip(delta, -cap, cap), cap)


def within_energy_bound(delta: Array) -> Array:
    """Where a step is not divergent: its energy error is finite and below `MAX_ENERGY_ERROR`
    in size (NaN and ±∞ compare false)."""
    return jnp.abs(delta) < MAX_ENERGY_ERROR


def all_finite(*arrays) -> Array:
    """`True` when every entry of every array is finite (a scalar bool array)."""
    out = jnp.array(True)
    for a in arrays:
        if a is not None:
            out = out & jnp.all(jnp.isfinite(a))
    return out


def select(pred, on_true: PyTree, on_false: PyTree) -> PyTree:
    """`jnp.where(pred, a, b)` leafwise over two PyTrees of the same structure."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)
