"""Ensembles and interacting particles (ALDI, EKI, SVGD, MMD flows, mean-field Langevin, the
ensemble score sampler) and thinning (kernel thinning, Compress++, Stein thinning)."""

from ._base import (
    AbstractParticleMethod as AbstractParticleMethod,
    ParticleResult as ParticleResult,
    ParticleState as ParticleState,
    run_particles as run_particles,
)
from ._ensemble import ALDI as ALDI, EKI as EKI, InverseProblem as InverseProblem
from ._ensemble_score import ensemble_score_sample as ensemble_score_sample
from ._mean_field import mean_field_langevin as mean_field_langevin
from ._mmd_flow import mmd_flow as mmd_flow, sliced_mmd_gradient as sliced_mmd_gradient
from ._svgd import SVGD as SVGD
from ._thinning import kernel_thin as kernel_thin, stein_thin as stein_thin
