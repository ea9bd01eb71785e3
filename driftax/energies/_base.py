"""The energy/score interface every part of driftax speaks.

An energy acts on ONE unbatched point `x` of shape `event_shape`; batching is done with `jax.vmap`.
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import (  # noqa: F401  (re-exported: energies use them from here)
    check_finite as check_finite,
    check_positive as check_positive,
    check_sample_shape as check_sample_shape,
)
from .._custom_types import Array, Key, Point, Scalar, Shape


def check_event(x: Array, event_shape: Shape, name: str = "x") -> Array:
    """Return `x` as a float array after checking (at trace time) that its shape is `event_shape`.

    Raises a `ValueError` naming the argument when the shape is wrong.
    """
    x = jnp.asarray(x)
    if tuple(x.shape) != tuple(event_shape):
        raise ValueError(
            f"`{name}` must have the energy's event shape {tuple(event_shape)} (one unbatched "
            f"point), got shape {tuple(x.shape)}; batch with jax.vmap."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


class AbstractEnergy(eqx.Module):
    """An unnormalized density on a fixed event shape, in the physics convention.

    Subclasses implement `log_density(x)` for ONE unbatched point `x` of shape `event_shape`
    and set the field `event_shape`. Everything else (`energy`, `score`, `value_and_score`) is
    derived here by autodiff, once.

    **Example:**

    ```python
    import jax.numpy as jnp
    import driftax as dx

    target = dx.energies.gaussian(jnp.zeros(3))
    logp, score = target.value_and_score(jnp.ones(3))
    ```
    """

    event_shape: eqx.AbstractVar[Shape]

    @abc.abstractmethod
    def log_density(self, x: Point) -> Scalar:
        """Unnormalized log density of ONE unbatched point `x` (shape `event_shape`); a scalar."""

    def energy(self, x: Point) -> Scalar:
        """`-log_density(x)`."""
        return -self.log_density(x)

    def score(self, x: Point) -> Point:
        """`∇ log_density(x)`, same shape as `x`."""
        return jax.grad(self.log_density)(x)

    def value_and_score(self, x: Point) -> tuple[Scalar, Point]:
        """`(log_density(x), score(x))` with one autodiff pass (what samplers call)."""
        return jax.value_and_grad(self.log_density)(x)

    @property
    def dim(self) -> int:
        """Number of scalar coordinates of one point (`prod(event_shape)`)."""
        return math.prod(self.event_shape)

    # -- the energy boundary: the user's points <-> the array the kernels act on -------------
    #
    # Kernels act on ONE array of shape `event_shape` and dtype `dtype`. An energy whose user-facing
    # points are pytrees (dicts of arrays, numpyro sites) has a flat `event_shape == (dim,)` and
    # overrides `ravel` / `unravel` / `variables`; for array energies all three are the identity.

    @property
    def dtype(self):
        """The floating dtype of points (the energy decides: samplers cast `x0` and their
        hyperparameters to it). Default: the dtype of the energy's first floating array field
        (canonicalized: float64 data without x64 give float32), else JAX's default float."""
        for leaf in jax.tree_util.tree_leaves(self):
            if isinstance(leaf, (jax.Array, np.ndarray)) and jnp.issubdtype(
                leaf.dtype, jnp.floating
            ):
                return jnp.dtype(jax.dtypes.canonicalize_dtype(leaf.dtype))
        return jnp.dtype(jnp.result_type(float))

    def ravel(self, point) -> Array:
        """The kernels' array (shape `event_shape`) of ONE user-facing point."""
        return check_event(point, self.event_shape, "x0")

    def unravel(self, x: Array):
        """The user-facing point (possibly a pytree) of ONE kernel array `x` of shape
        `event_shape`. Works under `jax.vmap`."""
        return x

    def variables(self, x: Array, *, constrained: bool = True) -> dict[str, Array]:
        """The named variables a summary / ArviZ export shows for ONE kernel array `x`:
        `{"x": x}` by default; pytree energies name leaves by their paths, numpyro energies by
        site (on the constrained scale unless `constrained=False`; other energies ignore the
        flag). Works under `jax.vmap`."""
        del constrained
        return {"x": x}


# ---------------------------------------------------------------------------------------------
# Pytree points: a static, hashable layout (treedef, leaf shapes, names) and its ravel/unravel
# ---------------------------------------------------------------------------------------------


def _path_name(path) -> str:
    """A readable name of a pytree path: `a`, `layer.w`, `w[0]` (`x` for the root)."""
    name = ""
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            part = str(entry.key)
            name = part if not name else f"{name}.{part}"
        elif isinstance(entry, jax.tree_util.GetAttrKey):
            name = entry.name if not name else f"{name}.{entry.name}"
        elif isinstance(entry, jax.tree_util.SequenceKey):
            name = f"{name or 'x'}[{entry.idx}]"
        else:  # flattened-index keys of custom nodes
            name = f"{name or 'x'}[{getattr(entry, 'key', entry)}]"
    return name or "x"


class PytreeLayout(eqx.Module):
    """The static description of a pytree point: its treedef, leaf shapes and leaf names.

    Hashable (all static), so an energy holding it stays a clean pytree and two energies on
    points of the same structure compile the same loop. `ravel` / `unravel` / `named` act on
    ONE point and work under `jax.vmap`.
    """

    treedef: object = eqx.field(static=True)
    shapes: tuple[tuple[int, ...], ...] = eqx.field(static=True)
    names: tuple[str, ...] = eqx.field(static=True)

    @property
    def dim(self) -> int:
        """Total number of scalars."""
        return sum(math.prod(s) for s in self.shapes)

    def ravel(self, tree, dtype) -> Array:
        """The flat `(dim,)` array of ONE pytree point (leaves cast to `dtype`)."""
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        if treedef != self.treedef:
            raise ValueError(
                f"`x0` must have the structure of the energy's example {self.treedef}, "
                f"got {treedef}."
            )
        for name, leaf, shape in zip(self.names, leaves, self.shapes):
            if tuple(jnp.shape(leaf)) != shape:
                raise ValueError(
                    f"`x0` leaf {name!r} must have shape {shape}, got {tuple(jnp.shape(leaf))}."
                )
        if not leaves:
            return jnp.zeros((0,), dtype)
        return jnp.concatenate([jnp.ravel(jnp.asarray(v)).astype(dtype) for v in leaves])

    def leaves(self, x: Array) -> list[Array]:
        """The leaves of ONE flat point `x` (shape `(dim,)`), in treedef order."""
        out, start = [], 0
        for shape in self.shapes:
            size = math.prod(shape)
            out.append(jax.lax.slice_in_dim(x, start, start + size, axis=-1).reshape(shape))
            start += size
        return out

    def unravel(self, x: Array):
        """The pytree point of ONE flat array `x` of shape `(dim,)`."""
        return jax.tree_util.tree_unflatten(self.treedef, self.leaves(x))

    def named(self, x: Array) -> dict[str, Array]:
        """`{path name: leaf}` of ONE flat array `x`."""
        return dict(zip(self.names, self.leaves(x)))


def pytree_layout(example, name: str = "example") -> tuple[PytreeLayout, np.dtype]:
    """`(layout, dtype)` of a pytree of floating arrays; a `TypeError` naming `name` if it is not
    one (a shape tuple, an int array, a string, an empty pytree)."""
    try:
        flat, treedef = jax.tree_util.tree_flatten_with_path(example)
    except Exception as e:  # noqa: BLE001
        raise TypeError(f"`{name}` must be a pytree of floating arrays: {e}") from e
    if not flat:
        raise TypeError(f"`{name}` must be a pytree of floating arrays, got an empty pytree.")
    dtypes = []
    for path, leaf in flat:
        if not isinstance(leaf, (jax.Array, np.ndarray, np.generic, float)) or isinstance(
            leaf, bool
        ):
            raise TypeError(
                f"`{name}` must be a pytree of floating arrays (an example point, not a shape); "
                f"leaf {_path_name(path)!r} is {type(leaf).__name__} {leaf!r}."
            )
        dt = jnp.result_type(leaf)
        if not jnp.issubdtype(dt, jnp.floating):
            raise TypeError(
                f"`{name}` must be a pytree of floating arrays; leaf {_path_name(path)!r} has "
                f"dtype {dt}."
            )
        dtypes.append(dt)
    dtype = jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.result_type(*dtypes)))
    layout = PytreeLayout(
        treedef=treedef,
        shapes=tuple(tuple(np.shape(leaf)) for _, leaf in flat),
        names=tuple(_path_name(path) for path, _ in flat),
    )
    return layout, dtype


class AbstractInitializable(AbstractEnergy):
    """Marker: the energy supplies dispersed starting points (e.g. Stan/numpyro's uniform(-2, 2)
    on the unconstrained space, or prior draws); `driftax.sample` uses them when `x0` is None."""

    @abc.abstractmethod
    def initial_points(self, key: Key, num: int) -> Array:
        """`num` dispersed starting points, shape `(num, *event_shape)`, dtype `dtype`."""


class AbstractSampleable(AbstractEnergy):
    """Marker: the target can produce exact independent draws."""

    @abc.abstractmethod
    def sample(self, key: Key, shape: Shape | int = ()) -> Array:
        """Exact draws of shape `(*shape, *event_shape)`.

        **Arguments:**

        - `key`: a JAX PRNG key.
        - `shape`: the leading batch shape (an int or tuple).
        """


class AbstractKnownNormalizer(AbstractEnergy):
    """Marker: `log Z = log ∫ exp(log_density(x)) dx` is known exactly (or to quadrature precision)."""

    @property
    @abc.abstractmethod
    def log_normalizer(self) -> Scalar:
        """log Z of `exp(log_density)` over the target's domain."""


class AbstractKnownMoments(AbstractEnergy):
    """Marker: ground-truth `mean` and (elementwise) `variance` are known."""

    @property
    @abc.abstractmethod
    def mean(self) -> Array:
        """Ground-truth mean, shape `event_shape`."""

    @property
    @abc.abstractmethod
    def variance(self) -> Array:
        """Ground-truth elementwise variance, shape `event_shape`."""


def normalized_log_density(energy: AbstractKnownNormalizer, x: Point) -> Scalar:
    """`log_density(x) - log_normalizer`: the normalized log density of a target with known log Z."""
    return energy.log_density(x) - energy.log_normalizer


def event_shape_of(example) -> Shape:
    """The shape of an example point."""
    return tuple(np.shape(example))
