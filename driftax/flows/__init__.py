"""Normalizing flows: bijections, flow distributions (which are energies), factories, training."""

from ._autoregressive import MaskedAutoregressive as MaskedAutoregressive
from ._bijection import (
    AbstractBijection as AbstractBijection,
    Chain as Chain,
    Invert as Invert,
    Scan as Scan,
)
from ._cnf import CNF as CNF, MLPVectorField as MLPVectorField, continuous_flow as continuous_flow
from ._coupling import (
    Coupling as Coupling,
    checkerboard_mask as checkerboard_mask,
    half_mask as half_mask,
)
from ._distribution import Flow as Flow, StandardNormal as StandardNormal
from ._elementwise import (
    Affine as Affine,
    Logit as Logit,
    Sigmoid as Sigmoid,
    Softplus as Softplus,
    Tanh as Tanh,
)
from ._equivariant import (
    CentredNormal as CentredNormal,
    EGNNVectorField as EGNNVectorField,
    equivariant_flow as equivariant_flow,
    is_centre_of_mass_free as is_centre_of_mass_free,
)
from ._fab import fit_fab as fit_fab
from ._factories import (
    coupling_flow as coupling_flow,
    lattice_coupling_flow as lattice_coupling_flow,
    masked_autoregressive_flow as masked_autoregressive_flow,
    planar_flow as planar_flow,
    radial_flow as radial_flow,
)
from ._gauge import (
    U1GaugeCoupling as U1GaugeCoupling,
    UniformAngles as UniformAngles,
    u1_gauge_flow as u1_gauge_flow,
    u1_plaquette_masks as u1_plaquette_masks,
)
from ._linear import (
    ActNorm as ActNorm,
    LULinear as LULinear,
    Permutation as Permutation,
    Reverse as Reverse,
    random_permutation as random_permutation,
)
from ._mcmc import (
    ISIR as ISIR,
    FlowLocalHybrid as FlowLocalHybrid,
    FlowState as FlowState,
    IndependentMH as IndependentMH,
    NeuTra as NeuTra,
    NeuTraState as NeuTraState,
    neutra as neutra,
)
from ._planar import Planar as Planar, Radial as Radial
from ._rigid import (
    QuaternionCoupling as QuaternionCoupling,
    UniformQuaternions as UniformQuaternions,
    from_hopf as from_hopf,
    quaternion_flow as quaternion_flow,
    quaternion_to_rotation as quaternion_to_rotation,
    rotation_log_density as rotation_log_density,
    rotation_to_quaternion as rotation_to_quaternion,
    to_hopf as to_hopf,
)
from ._smooth import (
    CircularSmoothTransformer as CircularSmoothTransformer,
    SmoothInterval as SmoothInterval,
    SmoothTorus as SmoothTorus,
    SmoothTransformer as SmoothTransformer,
)
from ._snf import (
    MCMCBlock as MCMCBlock,
    StochasticFlow as StochasticFlow,
    fit_stochastic_flow as fit_stochastic_flow,
)
from ._train import (
    fit_flow_matching as fit_flow_matching,
    fit_max_likelihood as fit_max_likelihood,
    fit_reverse_kl as fit_reverse_kl,
    forward_kl_loss as forward_kl_loss,
    importance_diagnostics as importance_diagnostics,
    max_likelihood_loss as max_likelihood_loss,
    reverse_kl_loss as reverse_kl_loss,
)
from ._transformers import (
    AbstractTransformer as AbstractTransformer,
    AffineTransformer as AffineTransformer,
    CircularSplineTransformer as CircularSplineTransformer,
    SplineTransformer as SplineTransformer,
)
from ._transport import FlowTransport as FlowTransport
