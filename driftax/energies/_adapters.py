"""Adapters between driftax energies and plain callables, numpyro models and blackjax."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Point, PyTree, Scalar, Shape
from ._base import AbstractEnergy, check_event


class FromLogDensity(AbstractEnergy):
    """An energy wrapping a JAX callable `fn(x) -> scalar`. Build it with [`from_log_density`][]."""

    fn: Callable[[Array], Array]
    event_shape: Shape = eqx.field(static=True)

    def log_density(self, x: Point) -> Scalar:
        return self.fn(check_event(x, self.event_shape))


def from_log_density(fn: Callable[[Array], Array], example) -> FromLogDensity:
    """Wrap any JAX callable `fn(x) -> scalar` as a driftax energy on points shaped like `example`.

    `fn` is traced once on `example` (abstractly, no FLOPs) to check that it returns a real scalar.

    **Arguments:**

    - `fn`: unnormalized log density of ONE point.
    - `example`: an example point (only its shape is used).

    **Example:**

    ```python
    energy = from_log_density(lambda x: -0.5 * jnp.sum(x**2), jnp.zeros(3))
    ```
    """
    if not callable(fn):
        raise TypeError(f"`fn` must be callable, got {type(fn).__name__}.")
    shape = tuple(np.shape(example))
    spec = jax.ShapeDtypeStruct(shape, jnp.result_type(float))
    try:
        out = jax.eval_shape(fn, spec)
    except Exception as e:  # noqa: BLE001 - report any tracing failure with context
        raise TypeError(f"`fn` could not be evaluated on a point of shape {shape}: {e}") from e
    if not hasattr(out, "shape") or tuple(out.shape) != ():
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"`fn` must return a scalar log density, got output of shape {got}.")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"`fn` must return a real floating scalar, got dtype {out.dtype}.")
    return FromLogDensity(fn=fn, event_shape=shape)


class NumPyroEnergy(AbstractEnergy):
    """The posterior of a numpyro model on its unconstrained space, as a flat vector.

    `log_density(x) = -potential_energy(unravel(x))`, where `potential_energy` is numpyro's own
    (log-Jacobians of the constraining transforms included). [`NumPyroEnergy.constrain`][] maps a
    point back to the model's constrained sites (deterministic sites included). Build it with
    [`from_numpyro`][].
    """

    potential_fn: Callable[[PyTree], Array]
    postprocess_fn: Callable[[PyTree], dict]
    unravel: Callable[[Array], PyTree]
    initial_position: Array
    event_shape: Shape = eqx.field(static=True)

    def log_density(self, x: Point) -> Scalar:
        x = check_event(x, self.event_shape)
        return -self.potential_fn(self.unravel(x))

    def unconstrained_sites(self, x: Point) -> dict:
        """The unconstrained parameter dict of a flat point."""
        return self.unravel(check_event(x, self.event_shape))

    def constrain(self, x: Point) -> dict:
        """Map ONE flat unconstrained point to the model's constrained sites (a dict)."""
        return self.postprocess_fn(self.unravel(check_event(x, self.event_shape)))


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
        unravel=unravel,
        initial_position=jnp.asarray(flat),
        event_shape=(int(flat.size),),
    )


def to_logdensity_fn(energy: AbstractEnergy) -> Callable[[Array], Array]:
    """Export an energy as a blackjax `logdensity_fn` (a pure function of one position)."""
    if not isinstance(energy, AbstractEnergy):
        raise TypeError(f"`energy` must be a driftax AbstractEnergy, got {type(energy).__name__}.")
    return energy.log_density
