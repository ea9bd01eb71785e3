"""`solve`: integrate a batch from `t_noise` to `t_data` with a fixed-step solver (one scan)."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Key
from ._fewstep import DEIS, IPNDM, can_use_table, solve_by_table, table_form
from ._forward_processes import centre_for_solve
from ._grid import SCHEDULES, _check_num_steps, _grid_impl, check_grid, check_log_snr_ends
from ._model import ParameterizedField, declared_parameterization, declared_path
from ._path import (
    EDM,
    VE,
    VP,
    AbstractPath,
    CosineVP,
    LinearInterpolant,
    SubVP,
    TrigonometricInterpolant,
    check_parameterization,
)
from ._solvers import AbstractSolver


class Solution(eqx.Module):
    """The result of [`solve`][]`(..., full_output=True)`: final points, the grid, optional trajectory, and failures.

    - `x`: the batch at `t_data`, shape `(batch, *event_shape)`.
    - `ts`: the time grid, shape `(num_steps + 1,)`.
    - `trajectory`: `(num_steps + 1, batch, *event_shape)` if requested, else `None`.
    - `failed_step`: per example, the first step whose output was not finite, or `-1`.
    - `num_field_evals`: field evaluations per example.
    """

    x: Array
    ts: Array
    trajectory: Array | None
    failed_step: Array
    num_field_evals: int = eqx.field(static=True)

    @property
    def num_failed(self) -> Array:
        """How many examples ended non-finite."""
        return jnp.sum(self.failed_step >= 0)


def default_schedule(path: AbstractPath, solver: AbstractSolver | None = None) -> str:
    """The default time grid, chosen from error-vs-NFE measurements on mixture fields:

    - VP family: `"quadratic"` for the exponential integrators (DDIM, DPM-Solver++, UniPC),
      `"uniform"` for the others (Euler, Heun, Euler–Maruyama) and for iPNDM and DEIS;
    - `EDM` and `VE`: `"karras"` (rho = 7);
    - the interpolants: `"uniform"` (their log-SNR is infinite at `t = 1`);
    - other paths: `"log_snr"` where the log-SNR is finite at both ends, else `"uniform"`.
    """
    if isinstance(path, VP | SubVP | CosineVP):
        if isinstance(solver, IPNDM | DEIS):
            return "uniform"
        return "quadratic" if solver is not None and solver.exponential else "uniform"
    if isinstance(path, EDM | VE):
        return "karras"
    if isinstance(path, LinearInterpolant | TrigonometricInterpolant):
        return "uniform"
    lams = np.asarray(path.half_log_snr(jnp.asarray([path.t_noise, path.t_data])))
    return "log_snr" if np.all(np.isfinite(lams)) else "uniform"


def _check_x_init(x_init, *, check_finite: bool = True) -> Array:
    if isinstance(x_init, jax.core.Tracer):
        return x_init
    x = jnp.asarray(x_init)
    if x.ndim < 1:
        raise ValueError(
            f"`x_init` must be a batch of shape (batch, *event_shape), got shape {x.shape}."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    if check_finite and not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError("`x_init` must be finite.")
    return x


def _checked_model(field, path, x_init, parameterization, *, check_finite: bool = True):
    """The checks every generation front door makes (`path`, `parameterization`, `field`, the
    batch `x_init`): returns `(ParameterizedField, x_init as a float array)`."""
    if not isinstance(path, AbstractPath):
        raise TypeError(
            f"`path` must be a driftax.diffusion AbstractPath, got {type(path).__name__}."
        )
    check_parameterization(parameterization)
    _check_field(field, path, parameterization)
    x_init = _check_x_init(x_init, check_finite=check_finite)
    return ParameterizedField(field=field, path=path, parameterization=parameterization), x_init


def _check_field(field, path, parameterization):
    if not callable(field):
        raise TypeError(f"`field` must be a callable field(t, x), got {type(field).__name__}.")
    declared = declared_parameterization(field)
    if declared is not None and declared != parameterization:
        raise ValueError(
            f"`parameterization={parameterization!r}` does not match the model's declared "
            f"parameterization {declared!r}."
        )
    declared = declared_path(field)
    if declared is not None and type(declared) is not type(path):
        raise ValueError(
            f"the model was built for a {type(declared).__name__} path but `path` is a "
            f"{type(path).__name__}: the parameterizations would not match."
        )


def _scan(solver, model, x_init, keys, ts, save_trajectory):
    """The solver loop: one `lax.scan` over the grid, `vmap` over the batch."""
    num_steps = ts.shape[0] - 1
    state = jax.vmap(lambda x: solver.init(model, ts[0], x))(x_init)
    batch = x_init.shape[0]

    def body(carry, i):
        x, state, failed = carry
        if keys is None:  # deterministic: no per-step key work to trace or compile
            x1, state1 = jax.vmap(lambda x, s: solver.step(model, ts, i, x, s, key=None))(x, state)
        else:
            step_keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)

            def one(x, s, k):
                return solver.step(model, ts, i, x, s, key=k)

            x1, state1 = jax.vmap(one)(x, state, step_keys)
        finite = jnp.all(jnp.isfinite(x1.reshape(batch, -1)), axis=1)
        failed = jnp.where((failed < 0) & ~finite, i.astype(jnp.int32), failed)
        return (x1, state1, failed), (x1 if save_trajectory else None)

    failed0 = jnp.full((batch,), -1, jnp.int32)
    (x, _, failed), traj = jax.lax.scan(body, (x_init, state, failed0), jnp.arange(num_steps))
    if save_trajectory:
        traj = jnp.concatenate([x_init[None], cast(Array, traj)], axis=0)
    return x, traj, failed


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def _integrate(
    solver: AbstractSolver,
    model,
    x_init: Array,
    key,
    ts,
    schedule: str | None,
    num_steps: int | None,
    save_trajectory: bool,
    diagnostics: bool,
):
    """Everything of a `solve` call in ONE compiled function: the grid (when `ts` is None), the
    keys, the loop, and the values the eager checks need (so a cold call compiles once)."""
    dtype = x_init.dtype
    if ts is None:
        assert num_steps is not None and schedule is not None  # set by solve
        ts = _grid_impl(model.path, num_steps, schedule, 7.0, dtype)
    ts = ts.astype(dtype)
    if solver.stochastic:
        key = jax.random.key(0) if key is None else key
        keys = jax.random.split(key, x_init.shape[0])
    else:
        keys = None
    x, traj, failed = _scan(solver, model, x_init, keys, ts, save_trajectory)
    diag = {"x_init_finite": jnp.all(jnp.isfinite(x_init))}
    if diagnostics:
        diag["alpha"] = model.path.alpha(ts)
        diag["lam"] = model.path.half_log_snr(ts)
    return x, traj, failed, ts, diag


def _post_checks(diag, solver, parameterization, ts):
    """Raise the configuration errors that need the grid's values (computed in the jit)."""
    if isinstance(diag["x_init_finite"], jax.core.Tracer):
        return
    if not bool(diag["x_init_finite"]):
        raise ValueError("`x_init` must be finite.")
    if "alpha" not in diag:
        return
    alphas = np.asarray(diag["alpha"])
    if parameterization in ("score", "noise") and np.any(alphas == 0):
        t = float(np.asarray(ts)[np.argmax(alphas == 0)])
        raise ValueError(
            f"parameterization={parameterization!r} carries no information about the data "
            f"where alpha(t) = 0 (t = {t}); use a 'velocity' or 'data' model there, or move "
            "`t_noise` inside the path's domain."
        )
    if solver.exponential:
        lams = np.asarray(diag["lam"])
        if np.any(np.isnan(lams)) or not np.all(np.isfinite(lams[1:-1])):
            raise ValueError(
                f"{type(solver).__name__} steps in log-SNR, which must be finite at every "
                "interior time of the grid (only the two ends may be infinite)."
            )
        if not np.all(np.diff(lams) > 0):
            raise ValueError(
                f"{type(solver).__name__} needs the log-SNR to increase strictly along the grid."
            )


def solve(
    solver: AbstractSolver,
    field: Callable,
    path: AbstractPath,
    x_init: Array,
    *,
    num_steps: int | None = None,
    parameterization: str = "score",
    key: Key | None = None,
    schedule: str | None = None,
    ts: Array | None = None,
    throw: bool = True,
    save_trajectory: bool = False,
    full_output: bool = False,
) -> Array | Solution:
    """Integrate a batch `x_init` from `path.t_noise` to `path.t_data` with a fixed-step solver.

    **Arguments:**

    - `solver`: any [`AbstractSolver`][] (`Euler()`, `Heun()`, `DDIM()`, `DPMSolverPP2M()`,
      `DPMSolverPP3M()`, `DPMSolverPP2S()`, `DPMSolverPP3S()`, `UniPC()`, `EulerMaruyama()`,
      `PredictorCorrector(...)`).
    - `field`: `field(t, x)` for ONE unbatched `x`, returning the named `parameterization`.
    - `path`: the probability path (`VP()`, `EDM()`, `LinearInterpolant()`, ...).
    - `x_init`: the batch at `t_noise`, shape `(batch, *event_shape)`.
    - `num_steps`: number of steps (the NFE is `num_steps * solver.evals_per_step`).
    - `parameterization`: `"score"`, `"noise"`, `"data"` or `"velocity"`.
    - `key`: PRNG key, required by stochastic solvers.
    - `schedule`: the time grid (`"uniform"`, `"log_snr"`, `"karras"`, `"quadratic"`); default
      [`default_schedule`][]`(path, solver)`.
    - `ts`: an explicit grid instead of `num_steps`/`schedule`.
    - `throw`: raise if any output is not finite (ignored with `full_output=True`).
    - `save_trajectory`: keep every grid time's batch (in the [`Solution`][]).
    - `full_output`: return a [`Solution`][] (final batch, grid, optional trajectory, the first
      non-finite step of each example, NFE) and never raise on non-finite outputs.

    **Returns:** the batch at `t_data`, shape `(batch, *event_shape)`, or a [`Solution`][].

    The loop is one `lax.scan` compiled once per (solver, field, path, shapes): a second call
    with the same shapes does not retrace.
    """
    if not isinstance(solver, AbstractSolver):
        raise TypeError(
            f"`solver` must be a driftax.diffusion AbstractSolver, got {type(solver).__name__}."
        )
    model, x_init = _checked_model(field, path, x_init, parameterization, check_finite=False)
    model, x_init, offset = centre_for_solve(model, x_init)  # paths with a mean: centred
    if ts is None:
        if num_steps is None:
            raise ValueError("give `num_steps` (or an explicit time grid `ts`).")
        num_steps = _check_num_steps(num_steps)
        sched = default_schedule(path, solver) if schedule is None else schedule
        if sched not in SCHEDULES:
            raise ValueError(f"`schedule` must be one of {SCHEDULES}, got {sched!r}.")
        if sched in ("log_snr", "karras"):
            check_log_snr_ends(path, sched)
        ts_arr = None
    else:
        if schedule is not None:
            raise ValueError("give either `schedule` or `ts`, not both.")
        ts_np = check_grid(path, ts)
        if num_steps is not None and num_steps != ts_np.shape[0] - 1:
            raise ValueError(
                f"`num_steps={num_steps}` does not match the grid `ts` ({ts_np.shape[0] - 1} steps)."
            )
        num_steps = int(ts_np.shape[0]) - 1
        sched = None
        ts_arr = jnp.asarray(ts_np, x_init.dtype)
    nfe = num_steps * solver.evals_per_step
    if nfe < solver.order:
        raise ValueError(
            f"{type(solver).__name__} has order {solver.order} and needs at least {solver.order} "
            f"field evaluations; num_steps={num_steps} gives {nfe}."
        )
    if key is None and solver.stochastic:
        raise ValueError(f"`key` is required: {type(solver).__name__} is stochastic.")
    form = table_form(solver)
    if form is not None and can_use_table(x_init, ts_arr):
        # linear multistep solvers: the coefficient table in NumPy, then one shared small loop
        x, traj, failed, ts_out, diag = solve_by_table(
            form, model, x_init, ts_arr, sched, num_steps if ts is None else None, save_trajectory
        )
    else:
        x, traj, failed, ts_out, diag = _integrate(
            solver,
            model,
            x_init,
            key,
            ts_arr,
            sched,
            num_steps if ts is None else None,
            bool(save_trajectory),
            True,
        )
    _post_checks(diag, solver, parameterization, ts_out)
    if offset is not None:
        x, traj = x + offset, (None if traj is None else traj + offset)
    sol = Solution(x=x, ts=ts_out, trajectory=traj, failed_step=failed, num_field_evals=nfe)
    if full_output:
        return sol
    if throw and isinstance(sol.failed_step, jax.core.Tracer):
        return eqx.error_if(
            sol.x, jnp.any(sol.failed_step >= 0), "solve: samples became non-finite."
        )
    if throw:
        bad = np.asarray(sol.failed_step)
        if np.any(bad >= 0):
            first = int(bad[bad >= 0].min())
            raise RuntimeError(
                f"{int(np.sum(bad >= 0))} of {bad.shape[0]} samples became non-finite (first at "
                f"step {first} of {sol.ts.shape[0] - 1}); the field returned non-finite values "
                "or the solver diverged. Use `solve(..., full_output=True)` to inspect the failures."
            )
    return sol.x
