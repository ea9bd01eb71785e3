"""Diffusion models and stochastic interpolants: Gaussian paths, parameterization conversions,
time grids, fixed-step ODE/SDE solvers, adaptive solves and likelihoods through diffrax,
training losses and guidance."""

from ._adaptive import (
    AdaptiveSolution as AdaptiveSolution,
    integrate_adaptive as integrate_adaptive,
    log_likelihood as log_likelihood,
    solve_adaptive as solve_adaptive,
)
from ._grid import check_grid as check_grid, time_grid as time_grid
from ._model import ParameterizedField as ParameterizedField
from ._path import (
    EDM as EDM,
    GVP as GVP,
    VE as VE,
    VP as VP,
    AbstractPath as AbstractPath,
    CosineVP as CosineVP,
    LinearInterpolant as LinearInterpolant,
    SubVP as SubVP,
    TrigonometricInterpolant as TrigonometricInterpolant,
)
from ._solve import (
    Solution as Solution,
    default_schedule as default_schedule,
    integrate as integrate,
    solve as solve,
)
from ._solvers import (
    DDIM as DDIM,
    AbstractSolver as AbstractSolver,
    DPMSolverPP2M as DPMSolverPP2M,
    DPMSolverPP3M as DPMSolverPP3M,
    Euler as Euler,
    EulerMaruyama as EulerMaruyama,
    Heun as Heun,
    LangevinCorrector as LangevinCorrector,
    PredictorCorrector as PredictorCorrector,
    UniPC as UniPC,
)
