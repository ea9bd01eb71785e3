"""Ready-made flows: planar, radial, coupling (RealNVP / neural spline) and masked autoregressive.

Each factory stacks `num_layers` identical layer structures with `eqx.filter_vmap` and runs them
with one `lax.scan` ([`Scan`][]), so compile time does not grow with depth.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .._checks import check_int, check_shape
from .._custom_types import Key
from ..energies._base import AbstractEnergy
from ._autoregressive import MaskedAutoregressive
from ._bijection import Chain, Invert, Scan
from ._coupling import Coupling, checkerboard_mask
from ._distribution import Flow, StandardNormal
from ._linear import Permutation, random_permutation
from ._planar import Planar, Radial


def _base(base, dim) -> AbstractEnergy:
    return StandardNormal((dim,)) if base is None else base


def _stack(make_layer, key: Key, num_layers: int):
    num_layers = check_int(num_layers, "num_layers")
    return Scan(eqx.filter_vmap(make_layer)(jax.random.split(key, num_layers)))


def _permutation(kind, key, dim):
    if kind == "random":
        return random_permutation(key, dim)
    if kind == "reverse":
        return Permutation(jnp.arange(dim - 1, -1, -1, dtype=jnp.int32))
    raise ValueError(f"`permutation` must be 'random' or 'reverse', got {kind!r}.")


def _layer_options(transformer, hidden, depth, knots, interval, cond_dim, activation) -> dict:
    """The keyword arguments of one [`Coupling`][] / [`MaskedAutoregressive`][] layer (the
    spline options only for the spline transformers)."""
    opts: dict[str, Any] = dict(
        transformer=transformer,
        hidden=hidden,
        depth=depth,
        cond_dim=cond_dim,
        activation=activation,
    )
    if transformer in ("spline", "circular_spline"):
        opts["knots"] = knots
    if transformer == "spline":
        opts["interval"] = float(interval)
    return opts


def _vector_stack(layer_cls, key: Key, dim: int, num_layers, permutation, options: dict) -> Scan:
    """`num_layers` blocks `Chain([layer_cls(k, dim, **options), permutation])` (the layer alone
    when `dim == 1`), stacked and scanned."""

    def make_layer(k):
        kl, kp = jax.random.split(k)
        layer = layer_cls(kl, dim, **options)
        if dim == 1:
            return layer
        return Chain([layer, _permutation(permutation, kp, dim)])

    return _stack(make_layer, key, num_layers)


def planar_flow(
    key: Key, dim: int, num_layers: int = 16, *, init_scale: float = 0.5, base=None
) -> Flow:
    """A flow of `num_layers` [`Planar`][] layers on `R^dim` (Rezende & Mohamed, 2015).

    **Arguments:**

    - `key`: PRNG key for the initial parameters.
    - `dim`: the dimension.
    - `num_layers`: number of planar layers.
    - `init_scale`: standard deviation of the initial parameters (too small a value makes a
      reverse-KL fit collapse onto one mode more often).
    - `base`: base distribution (default: standard normal).

    **Returns:** a [`Flow`][]. Sampling is explicit; `log_density` inverts each layer by a
    scalar bisection.
    """
    dim = check_int(dim, "dim")
    layers = _stack(lambda k: Planar(k, dim, init_scale=init_scale), key, num_layers)
    return Flow(_base(base, dim), layers)


def radial_flow(
    key: Key, dim: int, num_layers: int = 16, *, init_scale: float = 0.1, base=None
) -> Flow:
    """A flow of `num_layers` [`Radial`][] layers on `R^dim` (Rezende & Mohamed, 2015)."""
    dim = check_int(dim, "dim")
    layers = _stack(lambda k: Radial(k, dim, init_scale=init_scale), key, num_layers)
    return Flow(_base(base, dim), layers)


def coupling_flow(
    key: Key,
    dim: int,
    transformer: str = "affine",
    num_layers: int = 8,
    hidden=64,
    *,
    depth: int | None = None,
    knots: int = 8,
    interval: float = 4.0,
    cond_dim: int | None = None,
    permutation: str = "random",
    activation: Callable = jax.nn.relu,
    base=None,
) -> Flow:
    """A coupling flow: RealNVP (`transformer="affine"`) or a rational-quadratic neural spline
    flow (`transformer="spline"`, `"circular_spline"` for angles).

    Each of the `num_layers` layers is a [`Coupling`][] that updates the second half of the
    coordinates conditioned on the first half, followed by a permutation.

    **Arguments:**

    - `key`: PRNG key.
    - `dim`: the dimension (`>= 2`).
    - `transformer`: `"affine"`, `"spline"` or `"circular_spline"`.
    - `num_layers`: number of coupling layers.
    - `hidden`: conditioner hidden width (int, with `depth` layers, default 1) or widths.
    - `knots`, `interval`: spline interior knots and half-width of the spline interval
      `[-interval, interval]` (identity outside).
    - `cond_dim`: size of a vector condition for a conditional flow (`None`: unconditional).
    - `permutation`: `"random"` (a fixed random permutation per layer) or `"reverse"`.
    - `activation`: conditioner activation.
    - `base`: base distribution (default: standard normal).

    **Returns:** a [`Flow`][] whose `bijection` is a [`Scan`][] of `Chain([Coupling, Permutation])`.
    """
    dim = check_int(dim, "dim", minimum=2)
    options = _layer_options(transformer, hidden, depth, knots, interval, cond_dim, activation)
    return Flow(
        _base(base, dim), _vector_stack(Coupling, key, dim, num_layers, permutation, options)
    )


def masked_autoregressive_flow(
    key: Key,
    dim: int,
    transformer: str = "affine",
    num_layers: int = 8,
    hidden=64,
    *,
    depth: int | None = None,
    knots: int = 8,
    interval: float = 4.0,
    cond_dim: int | None = None,
    permutation: str = "random",
    activation: Callable = jax.nn.relu,
    invert: bool = True,
    base=None,
) -> Flow:
    """A masked autoregressive flow (MAF, Papamakarios et al. 2017) with affine or spline
    transformers.

    With `invert=True` (MAF, the default) `log_density` is one network pass per layer and
    sampling is sequential (`dim` passes, in a `lax.scan`); `invert=False` gives an inverse
    autoregressive flow (IAF): fast sampling and `sample_and_log_density` (use it for reverse-KL
    training), sequential `log_density`. Other arguments as for [`coupling_flow`][].
    """
    dim = check_int(dim, "dim")
    options = _layer_options(transformer, hidden, depth, knots, interval, cond_dim, activation)
    stack = _vector_stack(MaskedAutoregressive, key, dim, num_layers, permutation, options)
    return Flow(_base(base, dim), Invert(stack) if invert else stack)


def lattice_coupling_flow(
    key: Key,
    event_shape,
    transformer: str = "affine",
    num_layers: int = 4,
    hidden=64,
    *,
    depth: int | None = None,
    knots: int = 8,
    interval: float = 4.0,
    activation: Callable = jax.nn.relu,
    base=None,
) -> Flow:
    """A coupling flow for lattice fields of shape `event_shape` (e.g. `(L, L)`): each of the
    `num_layers` blocks is a pair of [`Coupling`][] layers with the two checkerboard masks, so
    every site is updated once per block conditioned on its neighbours' parity class. With HMC
    on [`neutra`][]`(flow, action)` this is flow-transformed HMC (Foreman et al.).

    Other arguments as for [`coupling_flow`][]; the base defaults to `StandardNormal(event_shape)`.
    """
    shape = check_shape(event_shape, "event_shape")
    even = checkerboard_mask(shape, 0)
    kw = _layer_options(transformer, hidden, depth, knots, interval, None, activation)

    def make_block(k):
        k0, k1 = jax.random.split(k)
        return Chain([Coupling(k0, shape, mask=even, **kw), Coupling(k1, shape, mask=~even, **kw)])

    base = StandardNormal(shape) if base is None else base
    return Flow(base, _stack(make_block, key, num_layers))
