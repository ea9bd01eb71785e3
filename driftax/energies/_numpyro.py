"""numpyro models as driftax energies: the unconstrained potential, and the way back to sites.

The model's data are ARGUMENTS of the energy, not constants baked into it: array arguments are
dynamic leaves of the module, the model and everything else are static. A compiled loop that takes
the energy as an argument (`driftax.sample`, any `eqx.filter_jit` function) is therefore reused for
a new data set of the same shapes and dtypes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Key, Point, Scalar, Shape
from ._base import AbstractInitializable, check_event

_INIT_NAMES = ("uniform", "prior", "median")


def _split_args(args, name: str):
    """Split model arguments into (dynamic arrays, hashable static rest)."""

    def to_array(leaf):  # array-likes that are not arrays (e.g. pandas Series) become numpy arrays
        if eqx.is_array(leaf) or not hasattr(leaf, "__array__"):
            return leaf
        return np.asarray(leaf)

    args = jax.tree.map(to_array, args)
    dynamic, static = eqx.partition(args, eqx.is_array)
    leaves, treedef = jax.tree.flatten(static)
    for leaf in leaves:
        try:
            hash(leaf)
        except TypeError:
            raise TypeError(
                f"`{name}` of the model must be arrays, Python scalars/strings or pytrees of them; "
                f"got an unhashable {type(leaf).__name__}."
            ) from None
    return dynamic, (treedef, tuple(leaves))


def _join_args(dynamic, static):
    treedef, leaves = static
    return eqx.combine(dynamic, jax.tree.unflatten(treedef, leaves))


class NumPyroEnergy(AbstractInitializable):
    """The posterior of a numpyro model on its unconstrained space, as a flat vector.

    `log_density(x) = -potential_energy(unravel(x))`, where `potential_energy` is numpyro's own
    (log-Jacobians of the constraining transforms included), evaluated with the model arguments
    stored on the energy. Points are flat vectors of shape `(dim,)`; the way to and from the
    model's sites:

    - [`NumPyroEnergy.unravel`][] / [`NumPyroEnergy.ravel`][]: flat vector <-> dict of
      unconstrained latent sites;
    - [`NumPyroEnergy.variables`][] (and [`NumPyroEnergy.constrain`][]): the constrained latent
      sites plus the deterministic sites, by name (observed sites are left out);
    - [`NumPyroEnergy.initial_points`][]: dispersed starting points for many chains.

    Build it with [`from_numpyro`][].
    """

    model: Callable[..., Any] = eqx.field(static=True)
    model_args: Any
    model_kwargs: Any
    _static_args: Any = eqx.field(static=True)
    _static_kwargs: Any = eqx.field(static=True)
    sites: tuple[tuple[str, tuple[int, ...]], ...] = eqx.field(static=True)
    init_strategy: Any = eqx.field(static=True)
    _dtype: str = eqx.field(static=True)
    event_shape: Shape = eqx.field(static=True)

    # -- model plumbing ----------------------------------------------------------------------

    def _args(self):
        return (
            _join_args(self.model_args, self._static_args),
            _join_args(self.model_kwargs, self._static_kwargs),
        )

    @property
    def dtype(self):
        """The floating dtype of the flat unconstrained parameters."""
        return jnp.dtype(self._dtype)

    @property
    def site_names(self) -> tuple[str, ...]:
        """The latent (unconstrained) site names, in the order of the flat vector."""
        return tuple(name for name, _ in self.sites)

    # -- the energy ----------------------------------------------------------------------------

    def log_density(self, x: Point) -> Scalar:
        from numpyro.infer.util import potential_energy

        args, kwargs = self._args()
        return -cast(Array, potential_energy(self.model, args, kwargs, self.unravel(x)))

    # -- the energy boundary -------------------------------------------------------------------

    def unravel(self, x: Array) -> dict[str, Array]:
        """The dict of unconstrained latent sites of ONE flat point `x` (shape `(dim,)`).
        Works under `jax.vmap`."""
        x = check_event(x, self.event_shape).astype(self.dtype)
        out, start = {}, 0
        for name, shape in self.sites:
            size = math.prod(shape)
            out[name] = x[start : start + size].reshape(shape)
            start += size
        return out

    def ravel(self, point) -> Array:
        """The flat vector (shape `(dim,)`) of ONE point given as a dict of unconstrained latent
        sites (as [`NumPyroEnergy.unravel`][] returns), or already as a flat vector."""
        if not isinstance(point, dict):
            return check_event(point, self.event_shape, "x0").astype(self.dtype)
        names = set(self.site_names)
        if set(point) != names:
            missing, extra = sorted(names - set(point)), sorted(set(point) - names)
            raise ValueError(
                f"`x0` as a dict must hold exactly the model's latent sites {sorted(names)} "
                f"(unconstrained); missing {missing}, unexpected {extra}."
            )
        parts = []
        for name, shape in self.sites:
            value = jnp.asarray(point[name])
            if tuple(value.shape) != shape:
                raise ValueError(
                    f"`x0[{name!r}]` must have the unconstrained shape {shape}, got "
                    f"{tuple(value.shape)}."
                )
            parts.append(value.reshape(-1).astype(self.dtype))
        return jnp.concatenate(parts)

    def variables(self, x: Array, *, constrained: bool = True) -> dict[str, Array]:
        """The model's named variables at ONE flat point `x`.

        `constrained=True` (default): every latent site on its constrained scale (a half-Cauchy
        scale is positive) plus every deterministic site; `constrained=False`: the unconstrained
        latent sites (the same names). Observed sites are not included. Works under `jax.vmap`.
        """
        if not constrained:
            return self.unravel(x)
        from numpyro.infer.util import constrain_fn

        args, kwargs = self._args()
        out = constrain_fn(self.model, args, kwargs, self.unravel(x), return_deterministic=True)
        return dict(out)

    def constrain(self, x: Point) -> dict[str, Array]:
        """The constrained latent and deterministic sites of ONE flat point (`variables(x)`)."""
        return self.variables(x, constrained=True)

    def unconstrained_sites(self, x: Point) -> dict[str, Array]:
        """The unconstrained latent sites of ONE flat point (`unravel(x)`)."""
        return self.unravel(x)

    # -- starting points -----------------------------------------------------------------------

    def initial_points(self, key: Key, num: int) -> Array:
        """`num` dispersed starting points, shape `(num, dim)`, dtype `dtype`.

        Each point follows the energy's `init_strategy` (default: uniform in [-2, 2] on the
        unconstrained space, as Stan and numpyro do) and is redrawn (up to 100 times) until the
        log density and its gradient are finite. Raises a `ValueError` if no such point is found.
        """
        if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 1:
            raise ValueError(f"`num` must be an int >= 1, got {num!r}.")
        points, valid = _initial_points(self, key, int(num))
        if not isinstance(valid, jax.core.Tracer) and not bool(np.all(np.asarray(valid))):
            bad = np.flatnonzero(~np.asarray(valid)).tolist()
            raise ValueError(
                f"no starting point with a finite log density and gradient was found for chain(s) "
                f"{bad} in 100 draws of init_strategy={self.init_strategy!r}; pass `x0` explicitly "
                "or check the model."
            )
        return points

    @property
    def initial_position(self) -> Array:
        """One starting point (the first of `initial_points(jax.random.key(0), 1)`)."""
        return self.initial_points(jax.random.key(0), 1)[0]


def _strategy(init):
    from numpyro.infer import init_to_median, init_to_sample, init_to_uniform

    if init == "uniform":
        # numpyro documents `radius` as a float; pyright infers int from its default `2`
        return init_to_uniform(radius=2.0)  # pyright: ignore[reportArgumentType]
    if init == "prior":
        return init_to_sample()
    if init == "median":
        return init_to_median(num_samples=15)
    return init


@eqx.filter_jit
def _initial_points(energy: NumPyroEnergy, key, num: int):
    from numpyro.infer.util import find_valid_initial_params

    args, kwargs = energy._args()
    prototype = {name: jnp.zeros(shape, energy.dtype) for name, shape in energy.sites}

    def one(k):
        (params, _, _), valid = find_valid_initial_params(
            k,
            energy.model,
            init_strategy=_strategy(energy.init_strategy),
            model_args=args,
            model_kwargs=kwargs,
            prototype_params=prototype,
        )
        return energy.ravel(params), valid

    return jax.vmap(one)(jax.random.split(key, num))


def _latent_sites(model, args, kwargs):
    """Trace the model once (prior draws) and return its non-observed sample sites."""
    from numpyro.handlers import seed, trace

    try:
        tr = trace(seed(model, jax.random.key(0))).get_trace(*args, **kwargs)
    except Exception as e:
        raise TypeError(
            f"`model` could not be run with the given arguments: {type(e).__name__}: {e}"
        ) from e
    return {
        name: site
        for name, site in tr.items()
        if site["type"] == "sample" and not site["is_observed"]
    }


def from_numpyro(
    model: Callable[..., Any], *args, init_strategy="uniform", **kwargs
) -> NumPyroEnergy:
    """An energy from a numpyro model: its unconstrained potential, plus a way back to sites.

    **Arguments:**

    - `model`: a numpyro model (a callable with `numpyro.sample` statements); its latent sites
      must be continuous (discrete latent sites would need numpyro's enumeration, which is not
      supported: marginalize them out by hand).
    - `*args`, `**kwargs`: the model's arguments (data). Arrays among them are dynamic leaves of
      the energy: a new data set of the same shapes and dtypes reuses every compiled loop. Python
      numbers, strings and other non-arrays are compile-time constants (the model may use them as
      shapes); the model must not compute shapes from the VALUES of array arguments.
    - `init_strategy`: how [`NumPyroEnergy.initial_points`][] draws dispersed starts:
      `"uniform"` (default; uniform(-2, 2) on the unconstrained space, as Stan/numpyro),
      `"prior"` (prior draws), `"median"` (prior medians, nearly the same point for every
      chain), or a numpyro init strategy such as `numpyro.infer.init_to_uniform(radius=1.0)`.

    The flat vector holds the unconstrained latent sites in sorted-name order, each flattened;
    its dtype is the sites' dtype.

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
    if isinstance(init_strategy, str):
        if init_strategy not in _INIT_NAMES:
            raise ValueError(
                f"`init_strategy` must be one of {_INIT_NAMES} or a numpyro init strategy, got "
                f"{init_strategy!r}."
            )
    elif not callable(init_strategy):
        raise TypeError(
            f"`init_strategy` must be one of {_INIT_NAMES} or a numpyro init strategy (a "
            f"callable such as numpyro.infer.init_to_uniform()), got {init_strategy!r}."
        )
    from numpyro.distributions.transforms import biject_to

    dyn_args, static_args = _split_args(tuple(args), "args")
    dyn_kwargs, static_kwargs = _split_args(dict(kwargs), "kwargs")
    latent = _latent_sites(model, args, kwargs)
    discrete = [name for name, site in latent.items() if site["fn"].support.is_discrete]
    if discrete:
        raise ValueError(
            f"`model` has discrete latent site(s) {discrete}: driftax samples continuous "
            "unconstrained parameters only, and numpyro's enumeration of discrete sites is not "
            "supported. Marginalize them out in the model (e.g. a mixture distribution)."
        )
    if not latent:
        raise ValueError("`model` has no latent sample sites to infer (every site is observed).")
    sites, dtypes = [], []
    for name in sorted(latent):
        site = latent[name]
        value = biject_to(site["fn"].support).inv(site["value"])
        sites.append((name, tuple(int(s) for s in jnp.shape(value))))
        dtypes.append(jnp.result_type(value))
    dtype = jnp.result_type(*dtypes)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    dim = sum(math.prod(shape) for _, shape in sites)
    if dim == 0:
        raise ValueError(
            "`model` has no latent sample sites to infer (all latent sites are empty)."
        )
    return NumPyroEnergy(
        model=model,
        model_args=dyn_args,
        model_kwargs=dyn_kwargs,
        _static_args=static_args,
        _static_kwargs=static_kwargs,
        sites=tuple(sites),
        init_strategy=init_strategy,
        _dtype=jnp.dtype(dtype).name,
        event_shape=(int(dim),),
    )
