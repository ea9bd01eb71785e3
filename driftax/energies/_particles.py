"""Particle systems: DW-4 (pairwise double well) and the Lennard-Jones clusters LJ-13 / LJ-55.

Points are FLAT vectors of `n_particles · spatial_dim` coordinates, particle-major
(`x.reshape(n_particles, spatial_dim)` gives the positions).

**Translation invariance.** Both energies depend only on the relative positions of the particles
(the LJ harmonic term acts on `xᵢ − x̄`), so `exp(−energy)` is flat along the centre of mass and
NOT normalizable on ℝ^{n·d}: the targets live on the zero-centre-of-mass subspace. Samplers
should start from centred points (`target.remove_mean(x)`) and keep them centred — project every
proposal or noise increment with `remove_mean` (for Langevin/HMC with an identity metric the
score is already orthogonal to the centre-of-mass directions, so only the injected noise needs the
projection). Metrics (energy histograms, interatomic distances) are invariant anyway.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Point, Scalar, Shape
from ._base import AbstractEnergy, check_event, check_finite, check_positive

# Issue that provides long-run reference samples for the particle targets.
_REFERENCE_ISSUE = "issue 6 (unnormalized-density samplers)"


def _scalar(value, name: str) -> float:
    arr = check_finite(value, name)
    if np.ndim(arr) != 0:
        raise ValueError(f"`{name}` must be a scalar, got shape {np.shape(arr)}.")
    return float(arr)


class AbstractParticleSystem(AbstractEnergy):
    """`n_particles` particles in `spatial_dim` dimensions at temperature `temperature`, as a flat
    vector; `log_density(x) = −physical_energy(x) / temperature`.

    Concrete helpers: `positions`, `remove_mean`, `interatomic_distances`; `reference_samples()`
    raises `NotImplementedError` until long-run reference samples exist.
    """

    n_particles: eqx.AbstractVar[int]
    spatial_dim: eqx.AbstractVar[int]
    temperature: eqx.AbstractVar[float]

    @abc.abstractmethod
    def physical_energy(self, x: Point) -> Scalar:
        """The interaction energy `U(x)` of one configuration, independent of the temperature."""

    def log_density(self, x: Point) -> Scalar:
        return -self.physical_energy(x) / self.temperature

    def positions(self, x: Point) -> Array:
        """The particle positions of one flat point, shape `(n_particles, spatial_dim)`."""
        x = check_event(x, self.event_shape)
        return x.reshape(self.n_particles, self.spatial_dim)

    def remove_mean(self, x: Point) -> Point:
        """Project one flat point onto the zero-centre-of-mass subspace (`xᵢ ← xᵢ − x̄`)."""
        pos = self.positions(x)
        return (pos - jnp.mean(pos, axis=0)).reshape(self.event_shape)

    def interatomic_distances(self, x: Point) -> Array:
        """Distances `‖xᵢ − xⱼ‖` of the unique pairs `i < j` (row-major upper triangle), shape
        `(n_particles·(n_particles−1)/2,)`. Safe to differentiate at coincident particles."""
        pos = self.positions(x)
        i, j = np.triu_indices(self.n_particles, k=1)
        sq = jnp.sum((pos[i] - pos[j]) ** 2, axis=-1)
        positive = sq > 0
        return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)

    def reference_samples(self) -> Array:
        """Long-run reference samples (not available yet).

        Raises `NotImplementedError`: reference samples for DW-4 / LJ-13 / LJ-55 need long MCMC
        runs and come with the unnormalized-density samplers.
        """
        raise NotImplementedError(
            f"Reference samples for {type(self).__name__} ({self.n_particles} particles) need a "
            f"long MCMC run; they are provided by {_REFERENCE_ISSUE} and not shipped yet."
        )


class PairDoubleWell(AbstractParticleSystem):
    r"""Particles interacting by a pairwise double-well potential (DW-4 of Köhler et al. 2020):

    `U(x) = Σ_{i<j} [a·(dᵢⱼ − offset)⁴ + b·(dᵢⱼ − offset)² + c]`, each unordered pair once.

    The defaults `a = 0.9, b = −4, c = 0, offset = 4` give `0.9(d−4)⁴ − 4(d−4)²`. Parameter
    naming follows bgflow's current `MultiDoubleWellPotential` and DEM / adjoint-sampling
    (`a·(d−d₀)⁴ + b·(d−d₀)² + c`, with `a=0.9, b=−4, c=0, offset=4`); the older bgflow/FAB code
    writes `c·(d−d₀)⁴ + b·(d−d₀)² + a` with `a=0, b=−4, c=0.9` — the same energy. bgflow sums
    over ordered pairs and divides by 2, which is again each unordered pair once. Temperature 1.
    Translation invariant (see the module notes): use `remove_mean`.
    """

    n_particles: int = eqx.field(static=True)
    spatial_dim: int = eqx.field(static=True)
    temperature: float = eqx.field(static=True)
    a: float = eqx.field(static=True)
    b: float = eqx.field(static=True)
    c: float = eqx.field(static=True)
    offset: float = eqx.field(static=True)
    event_shape: Shape = eqx.field(static=True)

    def physical_energy(self, x: Point) -> Scalar:
        d = self.interatomic_distances(x) - self.offset
        return jnp.sum(self.a * d**4 + self.b * d**2 + self.c)


class LennardJonesCluster(AbstractParticleSystem):
    r"""A Lennard-Jones cluster held together by a harmonic trap on the centred coordinates:

    `U(x) = pair_factor · Σ_{i<j} ε[(r_m/dᵢⱼ)¹² − 2(r_m/dᵢⱼ)⁶] + oscillator_scale · ½ Σᵢ ‖xᵢ − x̄‖²`

    with `ε = r_m = 1`. Default `pair_factor = 1`: each unordered pair once (bgflow's
    `LennardJonesPotential`, which divides its ordered-pair sum by 2). `pair_factor = 2` reproduces
    codebases that sum over ordered pairs without halving (DEM's `energy_factor = 1`, also used by
    adjoint sampling; DEM notes `energy_factor = 0.5` matches the once-per-pair convention).
    The pair energy has its minimum −ε at `d = r_m`. No clipping or smoothing of the repulsive
    wall. Translation invariant (see the module notes): use `remove_mean`.
    """

    n_particles: int = eqx.field(static=True)
    spatial_dim: int = eqx.field(static=True)
    temperature: float = eqx.field(static=True)
    pair_factor: float = eqx.field(static=True)
    oscillator_scale: float = eqx.field(static=True)
    epsilon: float = eqx.field(static=True)
    r_m: float = eqx.field(static=True)
    event_shape: Shape = eqx.field(static=True)

    def pair_energy(self, d: Array) -> Array:
        """`ε[(r_m/d)¹² − 2(r_m/d)⁶]`, elementwise."""
        inv6 = (self.r_m / d) ** 6
        return self.epsilon * (inv6**2 - 2.0 * inv6)

    def physical_energy(self, x: Point) -> Scalar:
        d = self.interatomic_distances(x)
        lj = self.pair_factor * jnp.sum(self.pair_energy(d))
        centred = self.remove_mean(x)
        return lj + self.oscillator_scale * 0.5 * jnp.sum(centred**2)


def _temperature(value) -> float:
    return float(check_positive(_scalar(value, "temperature"), "temperature"))


def dw4(
    *,
    a: float = 0.9,
    b: float = -4.0,
    c: float = 0.0,
    offset: float = 4.0,
    temperature: float = 1.0,
) -> PairDoubleWell:
    """DW-4: 4 particles in 2-D with the pair energy `0.9(d−4)⁴ − 4(d−4)²` over unordered pairs,
    temperature 1 ([`PairDoubleWell`][]; flat event shape `(8,)`).

    Translation invariant: the target lives on the zero-centre-of-mass subspace (`remove_mean`).
    Reference samples come later (`reference_samples()` raises `NotImplementedError`).
    """
    return PairDoubleWell(
        n_particles=4,
        spatial_dim=2,
        temperature=_temperature(temperature),
        a=_scalar(a, "a"),
        b=_scalar(b, "b"),
        c=_scalar(c, "c"),
        offset=_scalar(offset, "offset"),
        event_shape=(8,),
    )


def _lj(n, pair_factor, oscillator_scale, temperature) -> LennardJonesCluster:
    return LennardJonesCluster(
        n_particles=n,
        spatial_dim=3,
        temperature=_temperature(temperature),
        pair_factor=float(check_positive(_scalar(pair_factor, "pair_factor"), "pair_factor")),
        oscillator_scale=float(
            check_positive(
                _scalar(oscillator_scale, "oscillator_scale"), "oscillator_scale", strict=False
            )
        ),
        epsilon=1.0,
        r_m=1.0,
        event_shape=(3 * n,),
    )


def lj13(
    *, pair_factor: float = 1.0, oscillator_scale: float = 1.0, temperature: float = 1.0
) -> LennardJonesCluster:
    """LJ-13: 13 Lennard-Jones particles in 3-D (flat event shape `(39,)`), `ε = r_m = 1`, each
    pair counted once, plus the harmonic term `½Σ‖xᵢ − x̄‖²` ([`LennardJonesCluster`][]).

    **Arguments:**

    - `pair_factor`: 1 (default, each unordered pair once) or 2 (the ordered-pair convention of
      DEM and others).
    - `oscillator_scale`: the harmonic trap's force constant (default 1).
    - `temperature`: default 1.
    """
    return _lj(13, pair_factor, oscillator_scale, temperature)


def lj55(
    *, pair_factor: float = 1.0, oscillator_scale: float = 1.0, temperature: float = 1.0
) -> LennardJonesCluster:
    """LJ-55: 55 Lennard-Jones particles in 3-D (flat event shape `(165,)`); otherwise as
    [`lj13`][]."""
    return _lj(55, pair_factor, oscillator_scale, temperature)
