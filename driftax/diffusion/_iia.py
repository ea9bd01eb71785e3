"""IIA-style fitted coefficients (Zhang, Niwa & Kleijn 2024, "improved integration approximation")
for Euler and DDIM: per-step coefficients fitted by least squares against a fine integration.

Each step of the base solver is written with its main increment `c_i u_i` (Euler: `c_i = t_{i+1} -
t_i`, `u` the velocity; DDIM: `c_i = -alpha_{i+1} expm1(-h_i)`, `u` the data prediction) and gets
two fitted scalars:

    x_{i+1} = base step(x_i) + beta_i c_i u_i + gamma_i c_i (u_i - u_{i-1})       (gamma_0 = 0),

fitted so that `x_{i+1}` matches a fine solve of the same ODE from `x_i` over `[t_i, t_{i+1}]`
on a few trajectories, step after step along the fitted solver's own trajectories. Zero
coefficients give the base solver back. The coefficients belong to one field, path and grid.
"""

from __future__ import annotations

from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_int
from .._custom_types import Array
from ._grid import check_grid
from ._path import AbstractPath
from ._solve import _checked_model, solve
from ._solvers import AbstractSolver, DPMSolverPP3M

__all__ = ["IIASolver", "fit_iia"]

_BASES = ("ddim", "euler")


def _increment(base: str, model, t0, t1, x0, u_prev, beta, gamma):
    """One step of the base solver plus the fitted terms; returns (x1, u0)."""
    path = model.path
    if base == "ddim":
        u = model.denoise(t0, x0)
        a1, s0, s1 = path.alpha(t1), path.sigma(t0), path.sigma(t1)
        h = path.half_log_snr(t1) - path.half_log_snr(t0)
        c = -a1 * jnp.expm1(-h)
        x1 = (s1 / s0) * x0 + c * u
    else:
        u = model.velocity(t0, x0)
        c = t1 - t0
        x1 = x0 + c * u
    return x1 + beta * c * u + gamma * c * (u - u_prev), u, c


class IIASolver(AbstractSolver):
    """Euler or DDIM with IIA-style per-step fitted coefficients (see [`fit_iia`][]), 1 NFE/step.

    Run it with `solve(solver, field, path, x_init, ts=solver.ts)`: the coefficients belong to
    that grid (another number of steps raises; other times are caught at run time).

    Fields: `base` (`"ddim"` or `"euler"`), `ts` (the grid), `beta`, `gamma` (one per step).
    """

    base: str = eqx.field(static=True)
    ts: Array
    beta: Array
    gamma: Array

    order: ClassVar[int] = 1

    @property
    def exponential(self) -> bool:  # type: ignore[override]
        return self.base == "ddim"

    def __check_init__(self):
        if self.base not in _BASES:
            raise ValueError(f"`base` must be one of {_BASES}, got {self.base!r}.")
        n = self.ts.shape[0] - 1
        if self.beta.shape != (n,) or self.gamma.shape != (n,):
            raise ValueError(
                f"`beta` and `gamma` must have one entry per step ({n}), got "
                f"{self.beta.shape} and {self.gamma.shape}."
            )

    def init(self, model, t0, x0) -> Any:
        return jnp.zeros_like(x0)

    def step(self, model, ts, index, x0, state, *, key):
        del key
        if ts.shape != self.ts.shape:
            raise ValueError(
                f"the IIA coefficients were fitted on a grid of {self.ts.shape[0] - 1} steps; "
                f"solve with `ts=solver.ts`, got {ts.shape[0] - 1} steps."
            )
        ts = eqx.error_if(
            ts,
            jnp.any(jnp.abs(ts - self.ts.astype(ts.dtype)) > 1e-6 * (1 + jnp.abs(ts))),
            "IIASolver: the grid differs from the one the coefficients were fitted on.",
        )
        x1, u, _ = _increment(
            self.base,
            model,
            ts[index],
            ts[index + 1],
            x0,
            state,
            self.beta[index],
            self.gamma[index],
        )
        return x1, u


def fit_iia(
    field,
    path: AbstractPath,
    x_fit: Array,
    *,
    base: str = "ddim",
    num_steps: int | None = None,
    schedule: str | None = None,
    ts: Array | None = None,
    parameterization: str = "score",
    fine_steps: int = 32,
) -> IIASolver:
    """Fit IIA-style per-step coefficients of Euler or DDIM on `field` (see [`IIASolver`][]).

    **Arguments:**

    - `field`, `path`, `parameterization`: the field to sample, as in `solve`.
    - `x_fit`: a batch of points at `path.t_noise` (a few hundred trajectories suffice).
    - `base`: `"ddim"` (default) or `"euler"`.
    - `num_steps` / `schedule` or `ts`: the grid the coefficients are for (as in `solve`;
      default schedule: log-SNR for DDIM, uniform for Euler).
    - `fine_steps`: DPM-Solver++(3M) steps of the fine reference solve per grid interval.

    **Returns:** an [`IIASolver`][] holding the grid and the coefficients.
    """
    from ._grid import time_grid

    if base not in _BASES:
        raise ValueError(f"`base` must be one of {_BASES}, got {base!r}.")
    model, x = _checked_model(field, path, x_fit, parameterization)
    fine_steps = check_int(fine_steps, "fine_steps", minimum=3)
    if ts is None:
        if num_steps is None:
            raise ValueError("give `num_steps` (or an explicit time grid `ts`).")
        sched = schedule or ("log_snr" if base == "ddim" else "uniform")
        grid = np.asarray(time_grid(path, num_steps, sched))  # pyright: ignore[reportArgumentType]
    else:
        if schedule is not None or num_steps is not None:
            raise ValueError("give either `ts` or `num_steps`/`schedule`, not both.")
        grid = check_grid(path, ts)
    n = grid.shape[0] - 1
    step = jax.jit(
        jax.vmap(
            lambda t0, t1, x0, up: _increment(base, model, t0, t1, x0, up, 0.0, 0.0),
            in_axes=(None, None, 0, 0),
        )
    )
    u_prev = jnp.zeros_like(x)
    betas, gammas = np.zeros(n), np.zeros(n)
    for i in range(n):
        t0, t1 = float(grid[i]), float(grid[i + 1])
        sub = jnp.linspace(t0, t1, fine_steps + 1, dtype=x.dtype)
        target = solve(DPMSolverPP3M(), field, path, x, ts=sub, parameterization=parameterization)
        x_base, u, c = step(grid[i], grid[i + 1], x, u_prev)
        c = c.reshape((-1,) + (1,) * (x.ndim - 1))
        r = np.asarray(target - x_base).reshape(-1)
        f1 = np.asarray(c * u).reshape(-1)
        feats = [f1] if i == 0 else [f1, np.asarray(c * (u - u_prev)).reshape(-1)]
        A = np.stack(feats, axis=1)
        coef, *_ = np.linalg.lstsq(A, r, rcond=None)
        betas[i] = coef[0]
        gammas[i] = coef[1] if i > 0 else 0.0
        x = x_base + betas[i] * c * u + gammas[i] * c * (u - u_prev)
        u_prev = u
    dtype = x.dtype
    return IIASolver(
        base=base,
        ts=jnp.asarray(grid, dtype),
        beta=jnp.asarray(betas, dtype),
        gamma=jnp.asarray(gammas, dtype),
    )
