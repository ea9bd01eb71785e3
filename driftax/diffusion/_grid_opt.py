"""`optimize_grid`: an "align your steps"-style time grid fitted to one solver, path, field and NFE.

Sabour, Fidler & Kreis (2024) choose the `n + 1` times of a few-step sampler by minimising an
upper bound on the discretisation error of that sampler for that model. Here the proxy is the
error itself, measured on sample paths: the mean squared distance between the solver's output on
the candidate grid and a fine reference solve of the same probability-flow ODE from the same
starting points. The grid is parameterised so that it is always valid (strictly monotone, ends
fixed): `n` positive increments, a softmax of free logits, in the path's half log-SNR where that
is finite at both ends and in `t` otherwise. The logits start from the solver's default grid and
are fitted by Adam through the solver's loop (`jax.grad` of the whole solve); the best grid seen
is kept, so the result is never worse than the starting grid on the fitting batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._checks import check_int
from .._custom_types import Array
from .._training import train
from ._forward_processes import centre_for_solve
from ._grid import Schedule, _check_num_steps, check_grid, time_grid
from ._path import AbstractPath
from ._solve import _checked_model, _scan, default_schedule, solve
from ._solvers import AbstractSolver, DPMSolverPP3M

__all__ = ["optimize_grid"]


def _log_snr_is_finite(path: AbstractPath) -> bool:
    lams = np.asarray(path.half_log_snr(jnp.asarray([path.t_noise, path.t_data])))
    return bool(np.all(np.isfinite(lams)))


class _GridMap(eqx.Module):
    """Logits -> grid: increments `softmax(theta)` of the coordinate `c` (half log-SNR or t)."""

    path: AbstractPath
    use_log_snr: bool = eqx.field(static=True)

    def coord(self, ts):
        return self.path.half_log_snr(ts) if self.use_log_snr else ts

    def times(self, theta):
        t0 = jnp.asarray(self.path.t_noise, theta.dtype)
        t1 = jnp.asarray(self.path.t_data, theta.dtype)
        c0, c1 = self.coord(t0), self.coord(t1)
        u = jnp.concatenate([jnp.zeros((1,), theta.dtype), jnp.cumsum(jax.nn.softmax(theta))])
        c = c0 + (c1 - c0) * u
        ts = self.path.t_from_half_log_snr(c) if self.use_log_snr else c
        return ts.at[0].set(t0).at[-1].set(t1)

    def logits(self, ts):
        d = jnp.diff(self.coord(ts))
        return jnp.log(d / jnp.sum(d))


class _GridLoss(eqx.Module):
    """Mean squared error of `solver` on the grid `grid_map.times(theta)` against `x_ref`: the
    loss of the shared training loop (key-only, no batch) and, called as `loss(theta)`, the
    validation score that keeps the best grid seen."""

    solver: AbstractSolver
    model: Callable
    x_init: Array
    x_ref: Array
    grid_map: _GridMap

    def __call__(self, theta, batch=None, *, key=None):
        ts = self.grid_map.times(theta)
        x, _, _ = _scan(self.solver, self.model, self.x_init, None, ts, False)
        err = jnp.sum((x - self.x_ref).reshape(x.shape[0], -1) ** 2, axis=1)
        return jnp.mean(err)


@functools.lru_cache(maxsize=16)
def _adam(learning_rate: float):
    """One optax Adam per learning rate, so that a second fit reuses the compiled loop."""
    return optax.adam(learning_rate)


def _fit(loss: _GridLoss, theta0: Array, learning_rate: float, num_iterations: int) -> Array:
    """Adam on the logits through the shared training loop (`driftax._training.train`: one
    compiled scan, non-finite steps skipped); the loop's validation keeps the best grid seen
    after each step, and the starting grid is kept if no step beat it."""
    theta, _ = train(
        theta0,
        loss,
        key=jax.random.key(0),  # the loss is deterministic; the key is unused
        optimizer=_adam(learning_rate),
        num_steps=num_iterations,
        validation=loss,
        eval_every=1,
        desc="optimize_grid",
    )
    start, best = loss(theta0), loss(theta)
    return jnp.where(jnp.isfinite(best) & (best < start), theta, theta0)


def optimize_grid(
    solver: AbstractSolver,
    field: Callable,
    path: AbstractPath,
    x_init: Array,
    num_steps: int,
    *,
    parameterization: str = "score",
    x_ref: Array | None = None,
    reference_steps: int = 400,
    num_iterations: int = 300,
    learning_rate: float = 0.05,
    ts_init: Array | None = None,
) -> Array:
    """An "align your steps"-style time grid (Sabour et al. 2024) for `solver` at `num_steps`.

    Fits the `num_steps + 1` times, ends fixed at `path.t_noise` and `path.t_data`, to minimise
    the mean squared error of `solve(solver, field, path, x_init, ts=grid)` against a fine
    reference solve from the same `x_init`; the error is differentiated through the solver's
    loop and minimised by Adam over the softmax-parameterised increments of the grid (in the
    half log-SNR where it is finite at both ends, else in `t`). It starts from `ts_init`
    (default: the solver's default grid) and returns the best grid seen, so on `x_init` it is
    never worse than the starting grid. Fit on one batch, then sample fresh batches with
    `solve(solver, field, path, x, ts=grid)`.

    **Arguments:**

    - `solver`: a deterministic [`AbstractSolver`][] (the grid is fitted to its error).
    - `field`, `path`, `parameterization`: as in [`solve`][].
    - `x_init`: the fitting batch at `t_noise`, shape `(batch, *event_shape)` (a few hundred
      points are plenty; the loop runs on all of them at each iteration).
    - `num_steps`: the number of steps of the grid.
    - `x_ref`: the exact end points of `x_init`'s ODE paths, if known; default a
      DPM-Solver++(3M) solve with `reference_steps` steps.
    - `reference_steps`: steps of the default reference solve (at least 2 * `num_steps`).
    - `num_iterations`: Adam iterations (>= 1).
    - `learning_rate`: Adam's step size on the logits (> 0).
    - `ts_init`: the starting grid (`num_steps + 1` times from `t_noise` to `t_data`).

    **Returns:** the grid, shape `(num_steps + 1,)`, strictly monotone from `t_noise` to `t_data`.

    ```python
    import jax
    import driftax.diffusion as dd
    import driftax.energies as de

    path = dd.VP()
    field = de.NoisedGaussianMixture(de.gmm9(), path)
    x = path.prior_sample(jax.random.key(0), (128, 2))
    ts = dd.optimize_grid(dd.IPNDM(max_order=3), field.score, path, x, 5, num_iterations=50)
    samples = dd.solve(dd.IPNDM(max_order=3), field.score, path, x, ts=ts)
    ```
    """
    if not isinstance(solver, AbstractSolver):
        raise TypeError(
            f"`solver` must be a driftax.diffusion AbstractSolver, got {type(solver).__name__}."
        )
    if solver.stochastic:
        raise ValueError(
            f"`solver` must be deterministic: {type(solver).__name__} is stochastic, and a grid "
            "fitted to one noise draw would not transfer."
        )
    model, x = _checked_model(field, path, x_init, parameterization)
    num_steps = _check_num_steps(num_steps)
    if num_steps * solver.evals_per_step < solver.order:
        raise ValueError(
            f"`num_steps={num_steps}` is too few for {type(solver).__name__} (order "
            f"{solver.order}, {solver.evals_per_step} evaluations per step)."
        )
    reference_steps = check_int(reference_steps, "reference_steps", minimum=2 * num_steps)
    num_iterations = check_int(num_iterations, "num_iterations", minimum=1)
    if not (
        isinstance(learning_rate, (int, float)) and np.isfinite(learning_rate) and learning_rate > 0
    ):
        raise ValueError(f"`learning_rate` must be a finite number > 0, got {learning_rate!r}.")
    if ts_init is None:
        ts0 = time_grid(path, num_steps, cast(Schedule, default_schedule(path, solver)))
    else:
        ts_np = check_grid(path, ts_init, name="ts_init")
        if ts_np.shape[0] != num_steps + 1:
            raise ValueError(
                f"`ts_init` has {ts_np.shape[0] - 1} steps but `num_steps={num_steps}`."
            )
        ts0 = jnp.asarray(ts_np, x.dtype)
    if x_ref is None:
        ref = solve(
            DPMSolverPP3M(), field, path, x, num_steps=reference_steps,
            parameterization=parameterization,
        )  # fmt: skip
    else:
        ref = jnp.asarray(x_ref, x.dtype)
        if ref.shape != x.shape:
            raise ValueError(f"`x_ref` must have the shape of `x_init` {x.shape}, got {ref.shape}.")
        if not bool(jnp.all(jnp.isfinite(ref))):
            raise ValueError("`x_ref` must be finite.")
    ref = cast(Array, ref)
    model, x, offset = centre_for_solve(model, x)
    if offset is not None:
        ref = ref - offset
    grid_map = _GridMap(path=path, use_log_snr=_log_snr_is_finite(path))
    theta0 = grid_map.logits(jnp.asarray(ts0, x.dtype))
    if not bool(jnp.all(jnp.isfinite(theta0))):
        raise ValueError("`ts_init` must be strictly monotone in the path's log-SNR.")
    loss = _GridLoss(solver=solver, model=model, x_init=x, x_ref=ref, grid_map=grid_map)
    return grid_map.times(_fit(loss, theta0, float(learning_rate), num_iterations))
