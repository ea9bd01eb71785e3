"""Diffusion models and stochastic interpolants: Gaussian paths, parameterization conversions,
time grids, fixed-step ODE/SDE solvers, adaptive solves and likelihoods through diffrax,
training losses and guidance, and diffusion samplers trained from an energy (PIS, DDS, CMCD)."""

from ._adaptive import (
    AdaptiveSolution as AdaptiveSolution,
    log_likelihood as log_likelihood,
    solve_adaptive as solve_adaptive,
)
from ._adjoint import adjoint_deis as adjoint_deis
from ._bridges._egneot import (
    EgNEOT as EgNEOT,
    EgNEOTConditional as EgNEOTConditional,
    EgNEOTLoss as EgNEOTLoss,
    QuadraticPotential as QuadraticPotential,
    quadratic_plan as quadratic_plan,
)
from ._bridges._fit import fit_bridge as fit_bridge
from ._bridges._gaussian import GaussianBridge as GaussianBridge
from ._bridges._lightsb import LightSB as LightSB, LightSBLoss as LightSBLoss
from ._bridges._matching import (
    AffineDrift as AffineDrift,
    BridgeDrift as BridgeDrift,
    BridgeMatchingLoss as BridgeMatchingLoss,
    DSBMResult as DSBMResult,
    dsbm as dsbm,
)
from ._bridges._ot import (
    entropic_plan as entropic_plan,
    exact_assignment as exact_assignment,
)
from ._bridges._phase_space import (
    PhaseSpaceBridge as PhaseSpaceBridge,
    PhaseSpaceLoss as PhaseSpaceLoss,
    PhaseSpaceMLP as PhaseSpaceMLP,
    solve_phase_space as solve_phase_space,
)
from ._bridges._solve import solve_bridge as solve_bridge
from ._cld import (
    LinearDiffusion as LinearDiffusion,
    critically_damped as critically_damped,
    solve_cld as solve_cld,
)
from ._closed_form import (
    ClosedFormDiffusion as ClosedFormDiffusion,
    gaussian_approximation as gaussian_approximation,
    gaussian_teleport as gaussian_teleport,
)
from ._conditional import (
    ConditionalField as ConditionalField,
    ConditionalMLP as ConditionalMLP,
    ConditionalModel as ConditionalModel,
)
from ._dpm_v3 import (
    DPMSolverV3 as DPMSolverV3,
    EmpiricalModelStatistics as EmpiricalModelStatistics,
    estimate_model_statistics as estimate_model_statistics,
)
from ._energy_models import EnergyModel as EnergyModel, TimeEnergy as TimeEnergy
from ._fewstep import DEIS as DEIS, IPNDM as IPNDM
from ._forward_processes import (
    OrnsteinUhlenbeck as OrnsteinUhlenbeck,
    OrnsteinUhlenbeckMixtureFields as OrnsteinUhlenbeckMixtureFields,
)
from ._grid import check_grid as check_grid, time_grid as time_grid
from ._grid_opt import optimize_grid as optimize_grid
from ._guidance import (
    FKCResult as FKCResult,
    Guided as Guided,
    ScoreSum as ScoreSum,
    autoguidance as autoguidance,
    classifier_free_guidance as classifier_free_guidance,
    fkc_sample as fkc_sample,
    product_of_experts as product_of_experts,
    weighted_moments as weighted_moments,
)
from ._iia import IIASolver as IIASolver, fit_iia as fit_iia
from ._interpolant import (
    InterpolantField as InterpolantField,
    InterpolantLoss as InterpolantLoss,
    InterpolantMixtureFields as InterpolantMixtureFields,
    StochasticInterpolant as StochasticInterpolant,
    solve_interpolant as solve_interpolant,
)
from ._kinetic_optimal import (
    AnisotropicKineticOptimalPath as AnisotropicKineticOptimalPath,
    KineticOptimalPath as KineticOptimalPath,
    gaussian_kinetic_energy as gaussian_kinetic_energy,
)
from ._losses import (
    AbstractLoss as AbstractLoss,
    DenoisingLoss as DenoisingLoss,
    MeanFlowLoss as MeanFlowLoss,
    flow_matching_loss as flow_matching_loss,
    meanflow_sample as meanflow_sample,
    ot_coupling as ot_coupling,
)
from ._model import AbstractField as AbstractField, ParameterizedField as ParameterizedField
from ._models import (
    Denoiser as Denoiser,
    MeanFlowModel as MeanFlowModel,
    NetworkField as NetworkField,
)
from ._multimarginal import (
    MultimarginalGaussianFields as MultimarginalGaussianFields,
    MultimarginalInterpolant as MultimarginalInterpolant,
    MultimarginalLoss as MultimarginalLoss,
    MultimarginalMLP as MultimarginalMLP,
    fit_multimarginal as fit_multimarginal,
    solve_multimarginal as solve_multimarginal,
)
from ._nets import MLP as MLP
from ._path import (
    EDM as EDM,
    VE as VE,
    VP as VP,
    AbstractPath as AbstractPath,
    CosineVP as CosineVP,
    LinearInterpolant as LinearInterpolant,
    SubVP as SubVP,
    TrigonometricInterpolant as TrigonometricInterpolant,
)
from ._pfgm import (
    PFGMPP as PFGMPP,
    PFGMPPEmpiricalField as PFGMPPEmpiricalField,
    PFGMPPLoss as PFGMPPLoss,
)
from ._samplers._buffer import LocalSearch as LocalSearch
from ._samplers._cmcd import CMCD as CMCD
from ._samplers._core import (
    AbstractDiffusionSampler as AbstractDiffusionSampler,
    backward_path as backward_path,
    forward_path as forward_path,
)
from ._samplers._dds import DDS as DDS
from ._samplers._fit import fit_sampler as fit_sampler
from ._samplers._pis import PIS as PIS
from ._solve import (
    Solution as Solution,
    default_schedule as default_schedule,
    solve as solve,
)
from ._solvers import (
    DDIM as DDIM,
    AbstractCorrector as AbstractCorrector,
    AbstractSolver as AbstractSolver,
    DPMSolverPP2M as DPMSolverPP2M,
    DPMSolverPP2S as DPMSolverPP2S,
    DPMSolverPP3M as DPMSolverPP3M,
    DPMSolverPP3S as DPMSolverPP3S,
    Euler as Euler,
    EulerMaruyama as EulerMaruyama,
    Heun as Heun,
    LangevinCorrector as LangevinCorrector,
    PredictorCorrector as PredictorCorrector,
    SamplerCorrector as SamplerCorrector,
    UniPC as UniPC,
)
from ._train import fit as fit
from ._training_free import TrainingFreeGuidance as TrainingFreeGuidance, dps as dps
