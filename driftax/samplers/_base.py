"""The sampler contract: `AbstractSampler`, the states it carries and the `Info` every step reports."""

from __future__ import annotations

import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Key, PyTree
from ..energies._base import AbstractEnergy, check_event, check_finite

MAX_ENERGY_ERROR = 1000.0
"""An energy error above this (or a non-finite one) marks a step as divergent."""


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
    - `is_divergent`: the step hit a non-finite energy or an energy error above
      `MAX_ENERGY_ERROR`; it was rejected.
    - `energy_error`: the error in the Hamiltonian (or, for overdamped samplers, minus the
      Metropolis log ratio) of the proposal; the statistic unadjusted step sizes are tuned on.
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


def check_hyper(value, name: str, *, strict: bool = True) -> None:
    """Eagerly check that a concrete hyperparameter is finite and positive (non-negative if not
    `strict`); traced values pass. Raises a `ValueError` naming it."""
    if isinstance(value, jax.core.Tracer):
        return
    arr = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` must be finite, got {value!r}.")
    if np.any(arr <= 0) if strict else np.any(arr < 0):
        raise ValueError(
            f"`{name}` must be {'positive' if strict else 'non-negative'}, got {value!r}."
        )


def init_position(energy: AbstractEnergy, x0, *, with_score: bool = True):
    """Check `x0` against the energy and return `(x0, log_density, score)`."""
    if not isinstance(energy, AbstractEnergy):
        raise TypeError(f"`energy` must be a driftax AbstractEnergy, got {type(energy).__name__}.")
    x0 = check_event(x0, energy.event_shape, "x0")
    if not isinstance(x0, jax.core.Tracer):
        check_finite(x0, "x0")
    if with_score:
        logp, score = energy.value_and_score(x0)
        return x0, logp, score
    return x0, energy.log_density(x0), None


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
