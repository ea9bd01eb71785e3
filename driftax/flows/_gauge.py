"""Gauge-equivariant flows for 2-D U(1) lattice gauge theory (Kanwar et al. 2020; Albergo et al.
2021), for flow-transformed HMC (Foreman et al.).

Links use the layout of [`driftax.energies.U1Lattice`][]: `x[μ, n₀, n₁] = θ_μ(n)`, plaquettes
`θ_P(n) = θ_0(n) + θ_1(n+0̂) − θ_0(n+1̂) − θ_1(n)`. A coupling layer transforms a stripe of
*active* plaquettes with a circular transformer conditioned on the gauge-invariant *frozen*
plaquettes, and realises the change by shifting one link per active plaquette; the neighbouring
*passive* plaquettes absorb the opposite shift. Plaquettes are gauge invariant, so the layer
commutes with gauge transformations `θ_μ(n) → θ_μ(n) + α(n) − α(n+μ̂)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_int, check_shape
from .._custom_types import Array, Key, Point, Scalar, Shape
from ..energies._base import (
    AbstractKnownNormalizer,
    AbstractSampleable,
    check_event,
    check_sample_shape,
)
from ..energies._gaussian import _LOG_2PI
from ..energies._lattice import U1Lattice, _wrap
from ._bijection import Chain
from ._coupling import _ConditionedTransform
from ._distribution import Flow


class UniformAngles(AbstractSampleable, AbstractKnownNormalizer):
    """The uniform distribution of angles on the torus `[−π, π)^shape` (the base of a gauge
    flow). `log_density = −size·log 2π` everywhere: it is the periodic extension, so samplers on
    `ℝ^shape` (e.g. HMC in a flow's latent space) see a flat, periodic density."""

    event_shape: Shape = eqx.field(static=True)

    def __init__(self, event_shape):
        self.event_shape = check_shape(event_shape, "event_shape")

    def log_density(self, x: Point) -> Scalar:
        x = check_event(x, self.event_shape)
        return jnp.full((), -self.dim * _LOG_2PI, jnp.result_type(x.dtype, float))

    def sample(self, key: Key, shape: Shape | int = ()) -> Array:
        shape = check_sample_shape(shape)
        full = (*shape, *self.event_shape)
        return jax.random.uniform(key, full, jnp.result_type(float), -math.pi, math.pi)

    @property
    def log_normalizer(self) -> Scalar:
        return jnp.zeros((), jnp.result_type(float))


def u1_plaquette_masks(size: int, mu: int, offset: int) -> dict[str, np.ndarray]:
    """The masks of one gauge-equivariant coupling layer on an `L×L` lattice (`L` a multiple
    of 4): `"active"` plaquettes (one stripe of every four, `n_ν ≡ offset`, `ν = 1 − μ`),
    `"frozen"` ones (the next two stripes) and `"passive"` ones (the stripe before), each a
    boolean `(L, L)` array; the active links are `θ_μ(n)` at the active plaquettes."""
    size = check_int(size, "L", minimum=4)
    if size % 4:
        raise ValueError(f"`L` must be a multiple of 4 for the stripe masks, got {size}.")
    if mu not in (0, 1):
        raise ValueError(f"`mu` must be 0 or 1, got {mu!r}.")
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)):
        raise ValueError(f"`offset` must be an int, got {offset!r}.")
    stripe = (np.arange(size) - int(offset)) % 4  # along ν = 1 − μ
    stripe = stripe[None, :] if mu == 0 else stripe[:, None]
    stripe = np.broadcast_to(stripe, (size, size))
    return {
        "active": stripe == 0,
        "frozen": (stripe == 1) | (stripe == 2),
        "passive": stripe == 3,
    }


class U1GaugeCoupling(_ConditionedTransform):
    """A gauge-equivariant coupling layer for 2-D U(1) link angles of shape `(2, L, L)`.

    The active plaquettes `P_a` (see [`u1_plaquette_masks`][]) are mapped by a circular
    transformer `h` whose parameters come from an MLP on `(cos, sin)` of the frozen plaquettes;
    each active link `θ_μ(n)` is shifted by `±(h(P_a) − P_a)` so that `P_a → h(P_a)`. Frozen
    plaquettes do not contain active links, so `log|det| = Σ_a log h'(P_a)`. Outputs are wrapped
    to `[−π, π)`.

    **Arguments:**

    - `key`: PRNG key for the conditioner.
    - `L`: lattice side (a multiple of 4).
    - `mu`: direction of the updated links (0 or 1); `offset`: which stripe is active.
    - `transformer`: `"circular_spline"` (default) or any circle-preserving
      [`AbstractTransformer`][]; `**transformer_options` such as `knots`.
    - `hidden`, `depth`, `activation`: the conditioner MLP (its last layer starts at zero, so
      the layer starts as the identity).
    """

    lattice: U1Lattice
    mu: int = eqx.field(static=True)
    offset: int = eqx.field(static=True)
    active_index: tuple[int, ...] = eqx.field(static=True)
    frozen_index: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        key: Key,
        L: int,
        mu: int,
        offset: int = 0,
        *,
        transformer="circular_spline",
        hidden=64,
        depth: int | None = None,
        activation: Callable = jax.nn.relu,
        **transformer_options,
    ):
        masks = u1_plaquette_masks(L, mu, offset)
        self.mu, self.offset = int(mu), int(offset) % 4
        self.active_index = tuple(int(i) for i in np.flatnonzero(masks["active"]))
        self.frozen_index = tuple(int(i) for i in np.flatnonzero(masks["frozen"]))
        self.event_shape = (2, int(L), int(L))
        self.cond_shape = None
        self.lattice = U1Lattice(size=int(L), beta=1.0, event_shape=self.event_shape)
        n_in, n_changed = 2 * len(self.frozen_index), len(self.active_index)
        self._build(
            key, n_in, n_changed, transformer, transformer_options, hidden, depth, activation
        )

    def _run(self, x, condition, inverse: bool):
        size = self.event_shape[-1]
        plaq = self.lattice.plaquettes(x).reshape(-1)
        frozen = plaq[np.asarray(self.frozen_index)]
        active = plaq[np.asarray(self.active_index)]
        inputs = jnp.concatenate([jnp.cos(frozen), jnp.sin(frozen)])
        new, log_det = self._transform(active, inputs, inverse)
        delta = jnp.zeros(size * size, x.dtype).at[np.asarray(self.active_index)].set(new - active)
        # θ_0(n) enters P(n) with +, θ_1(n) with −
        sign = 1.0 if self.mu == 0 else -1.0
        links = x[self.mu]
        active_links = np.zeros(size * size, bool)
        active_links[np.asarray(self.active_index)] = True  # the link θ_μ(n) of each P_a(n)
        active_links = active_links.reshape(size, size)
        links = jnp.where(active_links, _wrap(links + sign * delta.reshape(size, size)), links)
        return x.at[self.mu].set(links), log_det


def u1_gauge_flow(
    key: Key,
    L: int,
    num_layers: int = 8,
    hidden=64,
    *,
    depth: int | None = None,
    knots: int = 8,
    activation: Callable = jax.nn.relu,
    **transformer_options,
) -> Flow:
    """A gauge-equivariant flow for 2-D U(1) links of shape `(2, L, L)` (Kanwar et al. 2020):
    a uniform-angle base and `num_layers` [`U1GaugeCoupling`][] layers with circular splines,
    cycling through `μ = i mod 2` and the four stripe offsets `(i // 2) mod 4`.
    `transformer_options` (e.g. `min_derivative`) go to every layer's circular spline.

    Train it by [`fit_reverse_kl`][] on `driftax.energies.u1_lattice(L, beta)`; with HMC on
    [`neutra`][]`(flow, target)` (or [`NeuTra`][]`(HMC(...), flow)`) it is flow-transformed HMC.
    """
    num_layers = check_int(num_layers, "num_layers")
    keys = jax.random.split(key, num_layers)
    layers = [
        U1GaugeCoupling(
            keys[i],
            L,
            i % 2,
            (i // 2) % 4,
            hidden=hidden,
            depth=depth,
            activation=activation,
            knots=knots,
            **transformer_options,
        )
        for i in range(num_layers)
    ]
    bij = layers[0] if num_layers == 1 else Chain(layers)
    return Flow(UniformAngles((2, int(L), int(L))), bij)
