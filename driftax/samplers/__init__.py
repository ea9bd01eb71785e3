"""Samplers: MCMC kernels on the integrator core, adaptation, the `sample` driver, diagnostics."""

from ._adaptation import (
    AbstractAdaptation as AbstractAdaptation,
    ChEESAdaptation as ChEESAdaptation,
    NoAdaptation as NoAdaptation,
    StepSizeAdaptation as StepSizeAdaptation,
    WindowAdaptation as WindowAdaptation,
)
from ._auto import default_adaptation as default_adaptation
from ._base import (
    MAX_ENERGY_ERROR as MAX_ENERGY_ERROR,
    AbstractMetricSampler as AbstractMetricSampler,
    AbstractSampler as AbstractSampler,
    AbstractStepSizeSampler as AbstractStepSizeSampler,
    Info as Info,
    KineticState as KineticState,
    MCMCState as MCMCState,
)
from ._core import (
    ChainCounts as ChainCounts,
    ChainsOutput as ChainsOutput,
    StreamStats as StreamStats,
    run_chains as run_chains,
)
from ._cslc import (
    CoarseToFineMALA as CoarseToFineMALA,
    PolynomialFieldAnsatz as PolynomialFieldAnsatz,
    WaveletConditionalEnergy as WaveletConditionalEnergy,
    fit_conditional_ansatz as fit_conditional_ansatz,
    haar_analysis as haar_analysis,
    haar_blocks as haar_blocks,
    haar_synthesis as haar_synthesis,
)
from ._diagnostics import ess as ess, mcse as mcse, rhat as rhat
from ._driver import sample as sample
from ._hamiltonian import (
    HMC as HMC,
    MALA as MALA,
    ULA as ULA,
    ChEESHMC as ChEESHMC,
    ChEESState as ChEESState,
    RandomWalk as RandomWalk,
)
from ._health import HealthReport as HealthReport
from ._integrators import (
    BAOAB as BAOAB,
    OBABO as OBABO,
    UBU as UBU,
    AbstractIntegrator as AbstractIntegrator,
    Leapfrog as Leapfrog,
    McLachlan as McLachlan,
    Yoshida as Yoshida,
)
from ._kinetic import (
    RandomizedMidpoint as RandomizedMidpoint,
    UnderdampedLangevin as UnderdampedLangevin,
)
from ._metrics import (
    AbstractMetric as AbstractMetric,
    DenseMetric as DenseMetric,
    DiagonalMetric as DiagonalMetric,
    IdentityMetric as IdentityMetric,
    LowRankMetric as LowRankMetric,
)
from ._microcanonical import MAMS as MAMS, MCLMC as MCLMC
from ._microcanonical_adaptation import (
    MAMSAdaptation as MAMSAdaptation,
    MCLMCAdaptation as MCLMCAdaptation,
)
from ._nuts import NUTS as NUTS
from ._particle_mcmc import (
    PMMH as PMMH,
    FixedLagResult as FixedLagResult,
    ParisResult as ParisResult,
    ParticleFilterResult as ParticleFilterResult,
    ParticleGibbs as ParticleGibbs,
    ParticleGibbsState as ParticleGibbsState,
    PPGResult as PPGResult,
    conditional_smc as conditional_smc,
    ffbsi as ffbsi,
    fixed_lag_smoother as fixed_lag_smoother,
    paris_smoother as paris_smoother,
    particle_filter as particle_filter,
    ppg_smoother as ppg_smoother,
    score_climbing as score_climbing,
)
from ._particles import (
    ALDI as ALDI,
    EKI as EKI,
    SVGD as SVGD,
    AbstractParticleMethod as AbstractParticleMethod,
    InverseProblem as InverseProblem,
    ParticleResult as ParticleResult,
    ParticleState as ParticleState,
    ensemble_score_sample as ensemble_score_sample,
    kernel_thin as kernel_thin,
    mean_field_langevin as mean_field_langevin,
    mmd_flow as mmd_flow,
    run_particles as run_particles,
    sliced_mmd_gradient as sliced_mmd_gradient,
    stein_thin as stein_thin,
)
from ._resampling import resample as resample
from ._result import SampleResult as SampleResult
from ._smc import AIS as AIS, SMC as SMC
from ._stochastic_gradient import (
    L2HMC as L2HMC,
    SGHMC as SGHMC,
    SGLD as SGLD,
    SGNHT as SGNHT,
    AbstractSchedule as AbstractSchedule,
    AbstractSGMCMC as AbstractSGMCMC,
    ConstantSchedule as ConstantSchedule,
    CyclicalSchedule as CyclicalSchedule,
    LeapfrogLayer as LeapfrogLayer,
    LearnedLeapfrog as LearnedLeapfrog,
    PolynomialSchedule as PolynomialSchedule,
    PreconditionedSGLD as PreconditionedSGLD,
    SGState as SGState,
    StructuredSGLD as StructuredSGLD,
    StructuredState as StructuredState,
    TabulatedSchedule as TabulatedSchedule,
    data_gradient_evaluations as data_gradient_evaluations,
    fit_l2hmc as fit_l2hmc,
    learned_leapfrog as learned_leapfrog,
    stationary_moments as stationary_moments,
    structured_stationary_covariance as structured_stationary_covariance,
)
from ._tempering import (
    ParallelTempering as ParallelTempering,
    ParallelTemperingAdaptation as ParallelTemperingAdaptation,
    PTState as PTState,
    equalize_ladder as equalize_ladder,
    geometric_ladder as geometric_ladder,
    tempering_result as tempering_result,
)
from ._transport import AbstractTransport as AbstractTransport
from ._weighted import WeightedSampleResult as WeightedSampleResult
