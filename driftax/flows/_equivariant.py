"""E(n)-equivariant continuous flows for particle systems (Satorras et al. 2021, "E(n) equivariant
normalizing flows"; Köhler et al. 2020, "Equivariant flows").

Points are flat vectors of `n_particles · spatial_dim` coordinates, particle-major, like the
particle targets of `driftax.energies` (`dw4`, `lj13`). The vector field is an equivariant graph
network (EGNN): messages from pairwise squared distances, coordinate updates along relative
vectors, and the mean velocity removed. The flow is then equivariant to rotations, reflections
and permutations, translation invariant, and keeps the centre of mass; with the centre-of-mass-free
Gaussian base its density lives on the `(n − 1)·d`-dimensional zero-centre-of-mass subspace, where
the particle targets live. The log-det is the CNF's exact divergence on the full space, which
equals the divergence on the subspace (the field is constant along translations and has no
component along them).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_int
from .._custom_types import Array, Key, Point, Scalar, Shape
from .._nn import MLP, geometric_frequencies, time_features
from ..energies._base import (
    AbstractKnownNormalizer,
    AbstractSampleable,
    check_event,
    check_sample_shape,
)
from ..energies._gaussian import _LOG_2PI
from ..energies._particles import AbstractParticleSystem
from ._bijection import AbstractBijection, Chain, Invert, Scan
from ._cnf import CNF
from ._distribution import Flow

_NUM_FREQUENCIES = 3


def _check_particles(n_particles, spatial_dim) -> tuple[int, int]:
    return check_int(n_particles, "n_particles", minimum=2), check_int(spatial_dim, "spatial_dim")


def _centre(pos: Array) -> Array:
    return pos - jnp.mean(pos, axis=0)


class CentredNormal(AbstractSampleable, AbstractKnownNormalizer):
    """The isotropic Gaussian `N(0, scale² I)` on the zero-centre-of-mass subspace of
    `n_particles` particles in `spatial_dim` dimensions (flat points of size `n·d`): the base of
    an [`equivariant_flow`][].

    Draws are centred Gaussians; `log_density(x) = −‖Px‖²/(2 scale²) − (n − 1)·d/2 · log(2π
    scale²)` with `P` the projection removing the centre of mass, normalized with respect to
    the Lebesgue measure of the `(n − 1)·d`-dimensional subspace (and constant along the centre
    of mass, like the particle targets).
    """

    n_particles: int = eqx.field(static=True)
    spatial_dim: int = eqx.field(static=True)
    scale: float = eqx.field(static=True)
    event_shape: Shape = eqx.field(static=True)

    def __init__(self, n_particles: int, spatial_dim: int, scale: float = 1.0):
        self.n_particles, self.spatial_dim = _check_particles(n_particles, spatial_dim)
        scale = float(scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"`scale` must be a positive finite float, got {scale!r}.")
        self.scale = scale
        self.event_shape = (self.n_particles * self.spatial_dim,)

    @property
    def subspace_dim(self) -> int:
        """`(n_particles − 1) · spatial_dim`, the dimension of the support."""
        return (self.n_particles - 1) * self.spatial_dim

    def log_density(self, x: Point) -> Scalar:
        x = check_event(x, self.event_shape)
        pos = _centre(x.reshape(self.n_particles, self.spatial_dim))
        k = self.subspace_dim
        return -0.5 * jnp.sum(pos**2) / self.scale**2 - 0.5 * k * (
            _LOG_2PI + 2.0 * math.log(self.scale)
        )

    def sample(self, key: Key, shape: Shape | int = ()) -> Array:
        shape = check_sample_shape(shape)
        n, d = self.n_particles, self.spatial_dim
        eps = jax.random.normal(key, (*shape, n, d), jnp.result_type(float))
        centred = eps - jnp.mean(eps, axis=-2, keepdims=True)
        return self.scale * centred.reshape(*shape, n * d)

    @property
    def log_normalizer(self) -> Scalar:
        return jnp.zeros((), jnp.result_type(float))


class EGNNVectorField(eqx.Module):
    """An E(n)-equivariant graph network velocity `v(t, x)` for `n_particles` particles in
    `spatial_dim` dimensions (Satorras et al. 2021), on ONE flat point of size `n·d`.

    Node features start from sinusoidal features of `t` (the particles are identical); each of
    `num_layers` layers computes messages `m_ij = φ_e(h_i, h_j, ‖x_i − x_j‖²)`, moves
    `x_i ← x_i + Σ_{j≠i} (x_i − x_j)/(‖x_i − x_j‖ + 1) · φ_x(m_ij) / (n − 1)` and updates
    `h_i ← h_i + φ_h(h_i, Σ_j m_ij)`. The velocity is the total displacement minus its mean,
    so it is equivariant to rotations, reflections and permutations, translation invariant, and
    centre-of-mass free. The coordinate heads `φ_x` start at zero: the flow starts as the
    identity.

    **Arguments:**

    - `key`: PRNG key.
    - `n_particles` (≥ 2), `spatial_dim`.
    - `hidden`: width of the node features and of every MLP.
    - `num_layers`: message-passing layers.
    - `activation`: default `jax.nn.silu` (smooth, so adaptive solvers take few steps).
    """

    embed: MLP
    edges: tuple[MLP, ...]
    coords: tuple[MLP, ...]
    nodes: tuple[MLP, ...]
    frequencies: Array
    n_particles: int = eqx.field(static=True)
    spatial_dim: int = eqx.field(static=True)
    event_shape: Shape = eqx.field(static=True)

    def __init__(
        self,
        key: Key,
        n_particles: int,
        spatial_dim: int,
        hidden: int = 32,
        num_layers: int = 3,
        *,
        activation: Callable = jax.nn.silu,
    ):
        self.n_particles, self.spatial_dim = _check_particles(n_particles, spatial_dim)
        hidden = check_int(hidden, "hidden")
        num_layers = check_int(num_layers, "num_layers")
        self.event_shape = (self.n_particles * self.spatial_dim,)
        self.frequencies = geometric_frequencies(_NUM_FREQUENCIES, 2.0 * math.pi)
        keys = jax.random.split(key, 3 * num_layers + 1)
        n_time = 1 + 2 * _NUM_FREQUENCIES
        self.embed = MLP(keys[0], n_time, hidden, (hidden,), activation=activation, zero_last=False)
        mlp = lambda k, n_in, n_out, zero: MLP(
            k, n_in, n_out, (hidden,), activation=activation, zero_last=zero
        )
        self.edges = tuple(
            mlp(keys[1 + 3 * i], 2 * hidden + 1, hidden, False) for i in range(num_layers)
        )
        self.coords = tuple(mlp(keys[2 + 3 * i], hidden, 1, True) for i in range(num_layers))
        self.nodes = tuple(
            mlp(keys[3 + 3 * i], 2 * hidden, hidden, False) for i in range(num_layers)
        )

    def __call__(self, t, x):
        n = self.n_particles
        pos0 = x.reshape(n, self.spatial_dim)
        emb = self.embed(time_features(jnp.asarray(t, x.dtype), self.frequencies.astype(x.dtype)))
        h = jnp.broadcast_to(emb, (n, emb.shape[0]))
        off = jnp.asarray(~np.eye(n, dtype=bool))
        pos = pos0
        for edge, coord, node in zip(self.edges, self.coords, self.nodes, strict=True):
            pos, h = _message_passing(edge, coord, node, pos, h, off)
        return _centre(pos - pos0).reshape(-1)


def _rows(mlp: MLP, inputs: Array) -> Array:
    """`mlp` applied along the last axis of `inputs` (any leading axes)."""
    flat = inputs.reshape(-1, inputs.shape[-1])
    return jax.vmap(mlp)(flat).reshape(*inputs.shape[:-1], -1)


def _message_passing(edge: MLP, coord: MLP, node: MLP, pos: Array, h: Array, off: Array):
    """One EGNN layer on positions `(n, d)` and node features `(n, hidden)`; `off` masks the
    diagonal pairs."""
    n, width = h.shape
    rel = pos[:, None, :] - pos[None, :, :]
    sq = jnp.where(off, jnp.sum(rel**2, axis=-1), 1.0)  # safe on the diagonal
    pairs = jnp.concatenate(
        [
            jnp.broadcast_to(h[:, None, :], (n, n, width)),
            jnp.broadcast_to(h[None, :, :], (n, n, width)),
            sq[..., None],
        ],
        axis=-1,
    )
    messages = jax.nn.silu(_rows(edge, pairs)) * off[..., None]
    weights = _rows(coord, messages)[..., 0] * off
    step = rel / (jnp.sqrt(sq) + 1.0)[..., None] * weights[..., None]
    pos = pos + jnp.sum(step, axis=1) / (n - 1)
    h = h + _rows(node, jnp.concatenate([h, jnp.sum(messages, axis=1)], axis=-1))
    return pos, h


def _preserves_centre_of_mass(bijection: AbstractBijection) -> bool:
    """Whether a bijection is known to keep the centre of mass (a CNF with an
    [`EGNNVectorField`][], or compositions of such)."""
    if isinstance(bijection, CNF):
        return isinstance(bijection.vector_field, EGNNVectorField)
    if isinstance(bijection, Chain):
        return all(_preserves_centre_of_mass(b) for b in bijection.bijections)
    if isinstance(bijection, Invert):
        return _preserves_centre_of_mass(bijection.bijection)
    if isinstance(bijection, Scan):
        return _preserves_centre_of_mass(bijection.layers)
    return False


def is_centre_of_mass_free(flow: Flow) -> bool:
    """Whether `flow` is a density on the zero-centre-of-mass subspace: a [`CentredNormal`][]
    base pushed through bijections that keep the centre of mass (e.g. an
    [`equivariant_flow`][])."""
    return (
        isinstance(flow, Flow)
        and isinstance(flow.base, CentredNormal)
        and _preserves_centre_of_mass(flow.bijection)
    )


def check_particle_flow(flow, energy, name: str = "flow") -> None:
    """Raise a `ValueError` naming `name` when `energy` is a translation-invariant particle
    system (`dw4`, `lj13`, ...: flat along the centre of mass, so not normalizable on the full
    space) and `flow` is not a centre-of-mass-free flow of the same particles: fitting such a
    flow by reverse KL or FAB would spread its mass along the centre of mass without bound."""
    if not isinstance(energy, AbstractParticleSystem):
        return
    if not is_centre_of_mass_free(flow):
        raise ValueError(
            f"`{name}` must be centre-of-mass free for the particle target "
            f"{type(energy).__name__} (its density is flat along the centre of mass): use "
            f"driftax.flows.equivariant_flow({energy.n_particles}, {energy.spatial_dim}) or "
            "another flow with a CentredNormal base and centre-of-mass-preserving layers."
        )
    base = flow.base
    assert isinstance(base, CentredNormal)
    if (base.n_particles, base.spatial_dim) != (energy.n_particles, energy.spatial_dim):
        raise ValueError(
            f"`{name}` models {base.n_particles} particles in {base.spatial_dim}-D, the target "
            f"{energy.n_particles} in {energy.spatial_dim}-D."
        )


def equivariant_flow(
    key: Key,
    n_particles: int,
    spatial_dim: int,
    hidden: int = 32,
    num_layers: int = 3,
    *,
    scale: float = 1.0,
    activation: Callable = jax.nn.silu,
    solver=None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    dt0: float | None = None,
    adjoint="recursive",
    max_steps: int = 4096,
) -> Flow:
    """An E(n)-equivariant continuous flow for `n_particles` particles in `spatial_dim`
    dimensions (flat points of size `n·d`): a [`CentredNormal`][]`(n, d, scale)` base and a
    [`CNF`][] whose field is an [`EGNNVectorField`][] (exact divergence; see [`CNF`][] for
    the solver options). It starts as the identity.

    The flow's density is invariant to rotations, reflections, permutations and translations
    and lives on the zero-centre-of-mass subspace, like `driftax.energies.dw4()` and `lj13()`.
    Train it with [`fit_max_likelihood`][] on samples or [`fit_reverse_kl`][] / [`fit_fab`][]
    on a particle energy (which require a centre-of-mass-free flow).
    """
    n_particles, spatial_dim = _check_particles(n_particles, spatial_dim)
    field = EGNNVectorField(
        key, n_particles, spatial_dim, hidden, num_layers, activation=activation
    )
    cnf = CNF(
        field,
        (n_particles * spatial_dim,),
        solver=solver,
        rtol=rtol,
        atol=atol,
        dt0=dt0,
        adjoint=adjoint,
        max_steps=max_steps,
    )
    return Flow(CentredNormal(n_particles, spatial_dim, scale), cnf)
