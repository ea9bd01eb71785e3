"""Stochastic-gradient MCMC (SGLD, pSGLD, SGHMC, SGNHT), its step-size schedules, the
structured SG-MCMC of Alexos et al., and the learned leapfrog (L2HMC)."""

from ._l2hmc import (
    L2HMC as L2HMC,
    LeapfrogLayer as LeapfrogLayer,
    LearnedLeapfrog as LearnedLeapfrog,
    fit_l2hmc as fit_l2hmc,
    learned_leapfrog as learned_leapfrog,
)
from ._schedules import (
    AbstractSchedule as AbstractSchedule,
    ConstantSchedule as ConstantSchedule,
    CyclicalSchedule as CyclicalSchedule,
    PolynomialSchedule as PolynomialSchedule,
    TabulatedSchedule as TabulatedSchedule,
)
from ._sgmcmc import (
    SGHMC as SGHMC,
    SGLD as SGLD,
    SGNHT as SGNHT,
    AbstractSGMCMC as AbstractSGMCMC,
    PreconditionedSGLD as PreconditionedSGLD,
    SGState as SGState,
    data_gradient_evaluations as data_gradient_evaluations,
)
from ._structured import (
    StructuredSGLD as StructuredSGLD,
    StructuredState as StructuredState,
    structured_stationary_covariance as structured_stationary_covariance,
)
from ._theory import stationary_moments as stationary_moments
