"""numpyro models as driftax energies: the unconstrained potential, and the way back to sites."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Point, PyTree, Scalar, Shape
from ._base import AbstractEnergy, check_event


class NumPyroEnergy(AbstractEnergy):
    """The posterior of a numpyro model on its unconstrained space, as a flat vector.

    `log_density(x) = -potential_energy(unravel(x))`, where `potential_energy` is numpyro's own
    (log-Jacobians of the constraining transforms included). [`NumPyroEnergy.constrain`][] maps a
    point back to the model's constrained sites (deterministic sites included). Build it with
    [`from_numpyro`][].
    """

    potential_fn: Callable[[PyTree], Array]
    postprocess_fn: Callable[[PyTree], dict]
    unravel_fn: Callable[[Array], PyTree]
    initial_position: Array
    event_shape: Shape = eqx.field(static=True)

    def log_density(self, x: Point) -> Scalar:
        x = check_event(x, self.event_shape)
        return -self.potential_fn(self.unravel_fn(x))

    def unconstrained_sites(self, x: Point) -> dict:
        """The unconstrained parameter dict of a flat point."""
        return self.unravel_fn(check_event(x, self.event_shape))

    def constrain(self, x: Point) -> dict:
        """Map ONE flat unconstrained point to the model's constrained sites (a dict)."""
        return self.postprocess_fn(self.unravel_fn(check_event(x, self.event_shape)))


def from_numpyro(model: Callable[..., Any], *args, **kwargs) -> NumPyroEnergy:
    """An energy from a numpyro model: its unconstrained potential, plus a way back to constrained sites.

    Uses `numpyro.infer.util.initialize_model` (numpyro's own transforms and potential).
    `args`/`kwargs` are passed to the model. The energy's `initial_position` is numpyro's
    default (uniform in [-2, 2] on the unconstrained space, from a fixed key).

    **Example:**

    ```python
    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0, 1))
        numpyro.sample("y", dist.Normal(mu, 1), obs=y)

    energy = from_numpyro(model, y=jnp.array([0.3, -0.1]))
    ```
    """
    if not callable(model):
        raise TypeError(f"`model` must be a callable numpyro model, got {type(model).__name__}.")
    from jax.flatten_util import ravel_pytree
    from numpyro.infer.util import initialize_model

    info = initialize_model(jax.random.key(0), model, model_args=args, model_kwargs=kwargs)
    params = info.param_info.z
    flat, unravel = ravel_pytree(params)
    if flat.size == 0:
        raise ValueError("`model` has no latent sample sites to infer.")
    return NumPyroEnergy(
        potential_fn=info.potential_fn,
        postprocess_fn=info.postprocess_fn,
        unravel_fn=unravel,
        initial_position=jnp.asarray(flat),
        event_shape=(int(flat.size),),
    )
