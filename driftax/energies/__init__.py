"""Energies: the common energy/score interface, every reference target, adapters and metrics of fit."""

from ._adapters import (
    FromLogDensity as FromLogDensity,
    NumPyroEnergy as NumPyroEnergy,
    from_log_density as from_log_density,
    from_numpyro as from_numpyro,
    to_logdensity_fn as to_logdensity_fn,
)
from ._base import (
    AbstractEnergy as AbstractEnergy,
    AbstractKnownMoments as AbstractKnownMoments,
    AbstractKnownNormalizer as AbstractKnownNormalizer,
    AbstractSampleable as AbstractSampleable,
    normalized_log_density as normalized_log_density,
)
from ._classic import (
    Banana as Banana,
    Funnel as Funnel,
    ManyWell as ManyWell,
    RezendeMohamed as RezendeMohamed,
    banana as banana,
    double_well_2d as double_well_2d,
    funnel as funnel,
    many_well as many_well,
    rezende as rezende,
)
from ._compose import (
    Conditioned as Conditioned,
    GeometricPath as GeometricPath,
    PullBack as PullBack,
    SumEnergy as SumEnergy,
    Tempered as Tempered,
)
from ._gaussian import (
    Gaussian as Gaussian,
    gaussian as gaussian,
    ill_conditioned_gaussian as ill_conditioned_gaussian,
)
from ._lattice import (
    Phi4Chain as Phi4Chain,
    Phi4Lattice as Phi4Lattice,
    U1Lattice as U1Lattice,
    phi4 as phi4,
    u1_lattice as u1_lattice,
)
from ._mixture import (
    GMM40_FAB_SCALE as GMM40_FAB_SCALE,
    GaussianMixture as GaussianMixture,
    GaussianPathLike as GaussianPathLike,
    NoisedGaussianMixture as NoisedGaussianMixture,
    four_mode_gmm as four_mode_gmm,
    gaussian_mixture as gaussian_mixture,
    gmm9 as gmm9,
    gmm25 as gmm25,
    gmm40 as gmm40,
)
from ._particles import (
    AbstractParticleSystem as AbstractParticleSystem,
    LennardJonesCluster as LennardJonesCluster,
    PairDoubleWell as PairDoubleWell,
    dw4 as dw4,
    lj13 as lj13,
    lj55 as lj55,
)
