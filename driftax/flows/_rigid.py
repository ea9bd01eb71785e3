"""Flows on unit quaternions for the orientations of rigid bodies (Köhler, Invernizzi, de Haan &
Noé 2023, "Rigid body flows for sampling molecular crystal structures"), built from the smooth
interval and circle maps of `_smooth.py`.

A unit quaternion `q ∈ S³` is written in Hopf coordinates

    q = (√(1−u) cos ξ₁, √(1−u) sin ξ₁, √u cos ξ₂, √u sin ξ₂),    u ∈ [0, 1], ξ₁, ξ₂ ∈ [−π, π),

in which the surface measure of S³ is `dS = ½ du dξ₁ dξ₂`: uniform, so a bijection of the chart
`[0, 1] × T²` has the same log-det on the sphere (the ½ cancels). Each coupling layer maps one of
the three coordinates of every body with a C^∞ monotone transformer (a bump-function interval map
for `u`, which keeps both ends fixed, a circle map for the angles) whose parameters a network
computes from features of the other two that are smooth functions of `q`: `(cos ξ₁, sin ξ₁,
cos ξ₂, sin ξ₂)` for `u`, `(q₂, q₃, u)` for `ξ₁`, `(q₀, q₁, u)` for `ξ₂`, plus an optional
condition (e.g. the bodies' positions, for a flow `p(orientations | positions)`).

The map is continuous on all of S³ and smooth off the two circles `u ∈ {0, 1}` (where one angle
is undefined; they have measure zero). `q` and `−q` are the same rotation (S³ double-covers
SO(3)): [`rotation_log_density`][] gives the density of the rotations, `q(q) + q(−q)` per body.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from .._checks import check_int
from .._custom_types import Array, Key, Point, Scalar, Shape
from ..energies._base import (
    AbstractKnownNormalizer,
    AbstractSampleable,
    check_event,
    check_sample_shape,
)
from ._bijection import Chain, _TwoWay, directed
from ._distribution import Flow
from ._factories import _stack
from ._nn import MLP, condition_size, hidden_widths
from ._smooth import CircularSmoothTransformer, SmoothTransformer, _check_components

_LOG_AREA_S3 = math.log(2.0 * math.pi**2)  # the surface area of S³
_MAX_SIGN_BODIES = 12  # rotation_log_density sums 2^n sign choices


def _check_quaternion_shape(event_shape: Shape, name: str) -> None:
    if len(event_shape) != 2 or event_shape[-1] != 4:
        raise ValueError(f"`{name}` must have shape (num_bodies, 4), got {tuple(event_shape)}.")


def _bodies(num_bodies) -> int:
    return check_int(num_bodies, "num_bodies")


class UniformQuaternions(AbstractSampleable, AbstractKnownNormalizer):
    """The uniform distribution of `num_bodies` unit quaternions, `(S³)^n` (the base of a
    [`quaternion_flow`][]; each body's rotation is then uniform on SO(3), the Haar measure).

    `log_density = −n log(2π²)` with respect to the surface measure of S³ (it is constant and
    does not look at the norm of `x`); `sample` normalises standard normal draws. Event shape
    `(num_bodies, 4)`.
    """

    event_shape: Shape = eqx.field(static=True)

    def __init__(self, num_bodies: int = 1):
        self.event_shape = (_bodies(num_bodies), 4)

    def log_density(self, x: Point) -> Scalar:
        x = check_event(x, self.event_shape)
        n = self.event_shape[0]
        return jnp.full((), -n * _LOG_AREA_S3, jnp.result_type(x.dtype, float))

    def sample(self, key: Key, shape: Shape | int = ()) -> Array:
        shape = check_sample_shape(shape)
        g = jax.random.normal(key, (*shape, *self.event_shape), jnp.result_type(float))
        return g / jnp.linalg.norm(g, axis=-1, keepdims=True)

    @property
    def log_normalizer(self) -> Scalar:
        return jnp.zeros((), jnp.result_type(float))


# ----------------------------------------------------------------------------------------------
# the Hopf chart


def to_hopf(q: Array) -> tuple[Array, Array, Array]:
    """Hopf coordinates `(u, ξ₁, ξ₂)` of quaternions `q` (`(..., 4)`, normalised first):
    `u = q₂² + q₃² ∈ [0, 1]`, `ξ₁ = atan2(q₁, q₀)`, `ξ₂ = atan2(q₃, q₂)` in `[−π, π]`."""
    q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    u = jnp.clip(q[..., 2] ** 2 + q[..., 3] ** 2, 0.0, 1.0)
    return u, jnp.arctan2(q[..., 1], q[..., 0]), jnp.arctan2(q[..., 3], q[..., 2])


def from_hopf(u: Array, xi1: Array, xi2: Array) -> Array:
    """The unit quaternions `(..., 4)` with Hopf coordinates `(u, ξ₁, ξ₂)` (inverse of
    [`to_hopf`][])."""
    a = jnp.sqrt(jnp.clip(1.0 - u, 0.0, 1.0))
    b = jnp.sqrt(jnp.clip(u, 0.0, 1.0))
    return jnp.stack([a * jnp.cos(xi1), a * jnp.sin(xi1), b * jnp.cos(xi2), b * jnp.sin(xi2)], -1)


def _features(coordinate: int, u, xi1, xi2) -> Array:
    """Smooth functions of `q` that do not depend on the chart coordinate being transformed."""
    if coordinate == 0:
        return jnp.stack([jnp.cos(xi1), jnp.sin(xi1), jnp.cos(xi2), jnp.sin(xi2)], -1)
    if coordinate == 1:
        b = jnp.sqrt(jnp.clip(u, 0.0, 1.0))
        return jnp.stack([b * jnp.cos(xi2), b * jnp.sin(xi2), u], -1)
    a = jnp.sqrt(jnp.clip(1.0 - u, 0.0, 1.0))
    return jnp.stack([a * jnp.cos(xi1), a * jnp.sin(xi1), u], -1)


_NUM_FEATURES = (4, 3, 3)


class QuaternionCoupling(_TwoWay):
    """A coupling layer of unit quaternions `(num_bodies, 4)`: one Hopf coordinate of every body
    (`coordinate` 0 = `u`, 1 = `ξ₁`, 2 = `ξ₂`) is mapped by a smooth monotone transformer whose
    parameters an MLP computes from smooth features of the other two coordinates of all bodies
    (and the condition). Outputs are unit quaternions; the log-det is with respect to the surface
    measure of `(S³)^n`. The last layer of the MLP starts at zero (the identity).

    **Arguments:**

    - `key`: PRNG key for the conditioner.
    - `num_bodies`: number of quaternions `n`.
    - `coordinate`: which Hopf coordinate this layer maps (0, 1 or 2).
    - `num_components`: smooth ramps per transformer.
    - `hidden`, `depth`: conditioner widths (an int with `depth` layers, or a sequence).
    - `cond_dim`: size of a vector condition (`None`: unconditional).
    - `activation`: conditioner activation (default `jax.nn.silu`, smooth like the maps).
    - `**options`: `sharpness`, `min_slope`, `init_weight` of the smooth transformer.
    """

    conditioner: MLP
    transformer: SmoothTransformer | CircularSmoothTransformer
    coordinate: int = eqx.field(static=True)
    event_shape: Shape = eqx.field(static=True)
    cond_shape: Shape | None = eqx.field(static=True)

    def __init__(
        self,
        key: Key,
        num_bodies: int = 1,
        *,
        coordinate: int,
        num_components: int = 8,
        hidden=64,
        depth: int | None = None,
        cond_dim: int | None = None,
        activation: Callable = jax.nn.silu,
        **options,
    ):
        n = _bodies(num_bodies)
        if isinstance(coordinate, bool) or coordinate not in (0, 1, 2):
            raise ValueError(f"`coordinate` must be 0 (u), 1 (xi1) or 2 (xi2), got {coordinate!r}.")
        k = _check_components(num_components)
        nc = condition_size(cond_dim)
        self.coordinate = int(coordinate)
        self.event_shape = (n, 4)
        self.cond_shape = None if cond_dim is None else (nc,)
        if self.coordinate == 0:
            self.transformer = SmoothTransformer(num_components=k, lower=0.0, upper=1.0, **options)
        else:
            self.transformer = CircularSmoothTransformer(num_components=k, **options)
        n_in = n * _NUM_FEATURES[self.coordinate] + nc
        n_out = n * self.transformer.num_params
        self.conditioner = MLP(
            key, n_in, n_out, hidden_widths(hidden, depth), activation=activation
        )

    def _run(self, x, condition, inverse: bool):
        coords = list(to_hopf(x))
        c = self.coordinate
        feats = _features(c, *coords).reshape(-1)
        if condition is not None:
            feats = jnp.concatenate([feats, condition.reshape(-1)])
        raw = self.conditioner(feats).reshape(self.event_shape[0], self.transformer.num_params)
        coords[c], log_grad = directed(self.transformer, inverse)(coords[c], raw)
        return from_hopf(*coords).astype(x.dtype), jnp.sum(log_grad)


def quaternion_flow(
    key: Key,
    num_bodies: int = 1,
    *,
    num_layers: int = 4,
    num_components: int = 8,
    hidden=64,
    depth: int | None = None,
    cond_dim: int | None = None,
    activation: Callable = jax.nn.silu,
    **options,
) -> Flow:
    """A smooth flow on the orientations of `num_bodies` rigid bodies as unit quaternions
    (event shape `(num_bodies, 4)`): a uniform base ([`UniformQuaternions`][]) pushed through
    `num_layers` blocks of three [`QuaternionCoupling`][]s (the Hopf coordinates `u`, `ξ₁`, `ξ₂`
    in turn), stacked and run by one `lax.scan`. Its `log_density` is with respect to the
    surface measure of `(S³)^n`; [`rotation_log_density`][] turns it into a density of rotations
    (SO(3), which S³ double-covers). Train it like any flow (`fit_reverse_kl` against an energy
    of quaternions, `fit_max_likelihood` on quaternion data); with `cond_dim` it is a conditional
    flow `p(q | c)` (e.g. orientations given positions).

    **Example:**

    ```python
    import jax
    import driftax as dx

    flow = dx.flows.quaternion_flow(jax.random.key(0), num_bodies=2, num_layers=2)
    q, log_q = flow.sample_and_log_density(jax.random.key(1), (5,))   # (5, 2, 4), (5,)
    R = dx.flows.quaternion_to_rotation(q)                            # (5, 2, 3, 3)
    ```
    """
    n = _bodies(num_bodies)
    num_components = _check_components(num_components)

    def make_block(k):
        keys = jax.random.split(k, 3)
        return Chain(
            [
                QuaternionCoupling(
                    keys[c],
                    n,
                    coordinate=c,
                    num_components=num_components,
                    hidden=hidden,
                    depth=depth,
                    cond_dim=cond_dim,
                    activation=activation,
                    **options,
                )
                for c in range(3)
            ]
        )

    return Flow(UniformQuaternions(n), _stack(make_block, key, num_layers))


# ----------------------------------------------------------------------------------------------
# rotations


def quaternion_to_rotation(q: Array) -> Array:
    """Rotation matrices `(..., 3, 3)` of quaternions `q = (w, x, y, z)` (`(..., 4)`, normalised
    first); `q` and `−q` give the same matrix."""
    q = jnp.asarray(q)
    if q.ndim < 1 or q.shape[-1] != 4:
        raise ValueError(f"`q` must have a last axis of size 4, got shape {q.shape}.")
    q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = (q[..., i] for i in range(4))
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return jnp.stack([jnp.stack(r, -1) for r in rows], -2)


def rotation_to_quaternion(rotation: Array) -> Array:
    """A unit quaternion `(..., 4)` with non-negative real part for each rotation matrix
    `(..., 3, 3)` (the inverse of [`quaternion_to_rotation`][] up to the sign of `q`).

    Uses the largest of the four squared components for stability (Shepperd's method)."""
    r = jnp.asarray(rotation)
    if r.ndim < 2 or r.shape[-2:] != (3, 3):
        raise ValueError(f"`rotation` must have trailing shape (3, 3), got {r.shape}.")
    t = r[..., 0, 0] + r[..., 1, 1] + r[..., 2, 2]
    cands = jnp.stack(
        [
            jnp.stack(
                [
                    1 + t,
                    r[..., 2, 1] - r[..., 1, 2],
                    r[..., 0, 2] - r[..., 2, 0],
                    r[..., 1, 0] - r[..., 0, 1],
                ],
                -1,
            ),
            jnp.stack(
                [
                    r[..., 2, 1] - r[..., 1, 2],
                    1 + 2 * r[..., 0, 0] - t,
                    r[..., 0, 1] + r[..., 1, 0],
                    r[..., 0, 2] + r[..., 2, 0],
                ],
                -1,
            ),
            jnp.stack(
                [
                    r[..., 0, 2] - r[..., 2, 0],
                    r[..., 0, 1] + r[..., 1, 0],
                    1 + 2 * r[..., 1, 1] - t,
                    r[..., 1, 2] + r[..., 2, 1],
                ],
                -1,
            ),
            jnp.stack(
                [
                    r[..., 1, 0] - r[..., 0, 1],
                    r[..., 0, 2] + r[..., 2, 0],
                    r[..., 1, 2] + r[..., 2, 1],
                    1 + 2 * r[..., 2, 2] - t,
                ],
                -1,
            ),
        ],
        -2,
    )  # row i is 4 q_i q (up to the sign of q_i)
    diag = jnp.stack(
        [1 + t, 1 + 2 * r[..., 0, 0] - t, 1 + 2 * r[..., 1, 1] - t, 1 + 2 * r[..., 2, 2] - t], -1
    )
    best = jnp.argmax(diag, axis=-1)
    q = jnp.take_along_axis(cands, best[..., None, None], axis=-2)[..., 0, :]
    q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    return jnp.where(q[..., :1] < 0, -q, q)


def rotation_log_density(flow: Flow, q: Array, condition: Array | None = None) -> Scalar:
    """The log density of the ROTATIONS of ONE point `q` (`(num_bodies, 4)`) under a quaternion
    flow, with respect to the volume measure of SO(3) (total volume `π²` per body, the image of
    S³'s surface measure): `log Σ_s q(s ⊙ q)` over the `2^n` sign choices `s ∈ {±1}ⁿ`, since
    each rotation has two quaternions. The uniform flow gives `−n log π²`.

    At most 12 bodies (4,096 sign choices); for more, work with the quaternion density, which
    differs from this one only where the flow is not symmetric under `q → −q`."""
    shape = tuple(flow.event_shape)
    _check_quaternion_shape(shape, "flow.event_shape")
    n = shape[0]
    if n > _MAX_SIGN_BODIES:
        raise ValueError(
            f"rotation_log_density sums 2^num_bodies sign choices; at most {_MAX_SIGN_BODIES} "
            f"bodies, got {n}."
        )
    q = check_event(q, shape)
    signs = jnp.asarray(list(itertools.product([1.0, -1.0], repeat=n)), q.dtype)  # (2^n, n)
    values = jax.vmap(lambda s: flow.log_density(s[:, None] * q, condition))(signs)
    return jax.nn.logsumexp(values)
