"""Energies: the common energy/score interface, every reference target, adapters and metrics of fit."""

from ._adapters import (
    FromLogDensity as FromLogDensity,
    from_log_density as from_log_density,
    to_logdensity_fn as to_logdensity_fn,
)
from ._base import (
    AbstractEnergy as AbstractEnergy,
    AbstractInitializable as AbstractInitializable,
    AbstractKnownMoments as AbstractKnownMoments,
    AbstractKnownNormalizer as AbstractKnownNormalizer,
    AbstractSampleable as AbstractSampleable,
    normalized_log_density as normalized_log_density,
)
from ._bayes import (
    LGCP as LGCP,
    LogisticRegression as LogisticRegression,
    breast_cancer_data as breast_cancer_data,
    lgcp as lgcp,
    lgcp_points as lgcp_points,
    logistic_regression as logistic_regression,
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
from ._data import (
    AbstractDataEnergy as AbstractDataEnergy,
    ControlVariate as ControlVariate,
    DataEnergy as DataEnergy,
    LinearRegression as LinearRegression,
    MinibatchEstimate as MinibatchEstimate,
    data_energy as data_energy,
    linear_regression as linear_regression,
    simulate_linear_regression as simulate_linear_regression,
)
from ._gaussian import (
    Gaussian as Gaussian,
    gaussian as gaussian,
    ill_conditioned_gaussian as ill_conditioned_gaussian,
)
from ._hard import (
    HorseshoeLogisticRegression as HorseshoeLogisticRegression,
    ItemResponse as ItemResponse,
    Rosenbrock as Rosenbrock,
    horseshoe_logistic_regression as horseshoe_logistic_regression,
    item_response as item_response,
    rosenbrock as rosenbrock,
    simulate_item_response as simulate_item_response,
)
from ._lattice import (
    Phi4Chain as Phi4Chain,
    Phi4Lattice as Phi4Lattice,
    U1Lattice as U1Lattice,
    phi4 as phi4,
    u1_lattice as u1_lattice,
)
from ._metrics import (
    MMDResult as MMDResult,
    energy_distance as energy_distance,
    median_heuristic as median_heuristic,
    mmd as mmd,
)
from ._metrics_bias import (
    BiasSquared as BiasSquared,
    bias_squared as bias_squared,
    gradients_to_threshold as gradients_to_threshold,
    running_bias_squared as running_bias_squared,
    running_moments as running_moments,
)
from ._metrics_logz import (
    ImportanceESS as ImportanceESS,
    LogZEstimate as LogZEstimate,
    elbo as elbo,
    eubo as eubo,
    importance_ess as importance_ess,
    log_z_importance as log_z_importance,
)
from ._metrics_modes import ModeCoverage as ModeCoverage, mode_coverage as mode_coverage
from ._metrics_ot import (
    SinkhornResult as SinkhornResult,
    energy_w2 as energy_w2,
    gaussian_w2 as gaussian_w2,
    interatomic_distance_w2 as interatomic_distance_w2,
    sinkhorn_divergence as sinkhorn_divergence,
    sinkhorn_w2 as sinkhorn_w2,
    sliced_wasserstein as sliced_wasserstein,
    wasserstein2_1d as wasserstein2_1d,
    wasserstein2_exact as wasserstein2_exact,
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
from ._numpyro import NumPyroEnergy as NumPyroEnergy, from_numpyro as from_numpyro
from ._particles import (
    AbstractParticleSystem as AbstractParticleSystem,
    LennardJonesCluster as LennardJonesCluster,
    PairDoubleWell as PairDoubleWell,
    dw4 as dw4,
    lj13 as lj13,
    lj55 as lj55,
)
from ._registry import TargetInfo as TargetInfo, reference_targets as reference_targets
from ._ssm import (
    AbstractAuxiliaryProposal as AbstractAuxiliaryProposal,
    AbstractBoundedTransition as AbstractBoundedTransition,
    AbstractProposal as AbstractProposal,
    AbstractStateSpaceModel as AbstractStateSpaceModel,
    GrowthModel as GrowthModel,
    KalmanMarginal as KalmanMarginal,
    KalmanResult as KalmanResult,
    LinearGaussianOptimalProposal as LinearGaussianOptimalProposal,
    LinearGaussianSSM as LinearGaussianSSM,
    LotkaVolterraProblem as LotkaVolterraProblem,
    LotkaVolterraSSM as LotkaVolterraSSM,
    StateSpacePosterior as StateSpacePosterior,
    growth_model as growth_model,
    kalman_filter as kalman_filter,
    kalman_marginal as kalman_marginal,
    linear_gaussian_ssm as linear_gaussian_ssm,
    lotka_volterra_model_fn as lotka_volterra_model_fn,
    lotka_volterra_problem as lotka_volterra_problem,
    lotka_volterra_ssm as lotka_volterra_ssm,
    rts_smoother as rts_smoother,
    state_space_posterior as state_space_posterior,
)
