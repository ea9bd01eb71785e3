"""`solve_bridge`: run a bridge's SDE `dX = drift dt + sigma dW` (or its probability-flow ODE)
from `t = 0` to `t = 1` on the fixed-step solver core of `driftax.diffusion`."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp

from ..._custom_types import Array, Key
from .._interpolant import InterpolantField, StochasticInterpolant, finite_x, solve_between_ends
from .._solve import Solution
from .._solvers import AbstractSolver, Euler, EulerMaruyama, Heun

# the time carriers of the solver core: from t = 0 (source) to t = 1 (target), and back
_FORWARD = StochasticInterpolant(gamma_scale=0.0, t_noise=0.0, t_data=1.0)
_BACKWARD = StochasticInterpolant(gamma_scale=0.0, t_noise=1.0, t_data=0.0)


class _Reversed(eqx.Module):
    """Time runs down in the reversed SDE: `dX = -backward_drift dt` with `dt < 0`."""

    backward_drift: Callable

    def __call__(self, t, x):
        return -self.backward_drift(t, x)


def _no_score(t, x):
    # the bridge's diffusion enters through the solver's `epsilon`; no score term
    return jnp.zeros_like(x)


def solve_bridge(
    model,
    x_init: Array,
    *,
    key: Key | None = None,
    num_steps: int | None = None,
    ts: Array | None = None,
    solver: AbstractSolver | None = None,
    save_trajectory: bool = False,
    reverse: bool = False,
    full_output: bool = False,
) -> Array | Solution:
    """Transport source samples `x_init` (at `t = 0`) to `t = 1` along a bridge model.

    With `solver=None` (default) or `EulerMaruyama()`: the bridge SDE `dX = model.drift(t, X) dt +
    model.sigma dW` by Euler–Maruyama (`key` required). With `Euler()` or `Heun()`: the
    probability-flow ODE `dX = model.velocity(t, X) dt` (for models with a `velocity`, e.g.
    [`GaussianBridge`][]). `model` is any bridge with `drift(t, x)` and `sigma`
    ([`GaussianBridge`][], [`LightSB`][], [`BridgeDrift`][]).

    With `reverse=True`, `x_init` are target samples at `t = 1` and the reversed SDE
    `dX = model.backward_drift(t, X) d(1 - t) + sigma dW` runs them back to `t = 0`.

    **Arguments:** `num_steps` (a uniform grid) or an explicit monotone grid `ts` inside
    `[0, 1]` (increasing, or decreasing with `reverse=True`); `save_trajectory` keeps every step; `full_output` returns a [`Solution`][]
    (failures reported in it instead of raised).
    """
    need = "backward_drift" if reverse else "drift"
    if not callable(getattr(model, need, None)) or getattr(model, "sigma", None) is None:
        raise TypeError(f"`model` must be a bridge with a `{need}(t, x)` method and a `sigma`.")
    if solver is None or isinstance(solver, EulerMaruyama):
        if solver is not None and solver.epsilon is not None:
            raise ValueError(
                "a bridge's diffusion is fixed by `model.sigma`: give EulerMaruyama() or None."
            )
        if key is None:
            raise ValueError("`key` is required for the bridge SDE.")
        solver = EulerMaruyama(epsilon=0.5 * float(model.sigma) ** 2)
        ode = False
    elif reverse:
        raise ValueError("`reverse=True` runs the reversed SDE: give solver=None.")
    elif isinstance(solver, Euler | Heun):
        if isinstance(solver, Heun) and solver.churn > 0:
            raise ValueError("Heun churn needs a Gaussian path; use Heun() for bridges.")
        if not callable(getattr(model, "velocity", None)):
            raise TypeError(
                f"an ODE solver needs the probability-flow `velocity`; {type(model).__name__} "
                "has none: use the SDE (solver=None)."
            )
        ode = True
    else:
        raise TypeError("bridges are solved with EulerMaruyama() (SDE), Euler() or Heun() (ODE).")
    if reverse:
        drift = _Reversed(model.backward_drift)
    else:
        drift = model.velocity if ode else model.drift
    field = InterpolantField(drift, _no_score, _BACKWARD if reverse else _FORWARD)
    sol = solve_between_ends(solver, field, x_init, key, num_steps, ts, save_trajectory)
    return sol if full_output else finite_x(sol)
