"""Particle filters, particle smoothers and particle MCMC on the state-space model interface of
`driftax.energies` (private: the public names are re-exported by `driftax.samplers`)."""

from ._filter import (
    ParticleFilterResult as ParticleFilterResult,
    particle_filter as particle_filter,
)
from ._pmcmc import (
    PMMH as PMMH,
    ParticleGibbs as ParticleGibbs,
    ParticleGibbsState as ParticleGibbsState,
    PPGResult as PPGResult,
    conditional_smc as conditional_smc,
    ppg_smoother as ppg_smoother,
    score_climbing as score_climbing,
)
from ._smoothers import (
    FixedLagResult as FixedLagResult,
    ParisResult as ParisResult,
    ffbsi as ffbsi,
    fixed_lag_smoother as fixed_lag_smoother,
    paris_smoother as paris_smoother,
)
