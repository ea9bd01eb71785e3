"""Continuous normalizing flows (Chen et al. 2018; FFJORD) on diffrax.

`dx/dt = f(t, x)` from `t0` to `t1`; the log-det follows the instantaneous change of variables
`d log|det ∂x(t)/∂x(t0)| / dt = tr ∂f/∂x`, computed exactly (small `d`) or by Hutchinson's
estimator with probes held fixed along the solve (`driftax._divergence`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import diffrax
import equinox as eqx
import jax.numpy as jnp

from .._checks import check_int, check_shape
from .._custom_types import Key, Shape
from .._divergence import integrate_with_divergence, sample_probes
from ._bijection import AbstractBijection, check_input
from ._distribution import Flow, StandardNormal
from ._nn import MLP, condition_size, hidden_widths


class MLPVectorField(eqx.Module):
    """A neural vector field `f(t, x[, condition])` on ONE point: an MLP on `(x, t, condition)`.

    The last layer starts at zero, so the flow starts as the identity. Use a smooth activation
    (default `tanh`) so adaptive solvers take few steps.
    """

    mlp: MLP
    event_shape: Shape = eqx.field(static=True)

    def __init__(
        self,
        key: Key,
        event_shape,
        hidden=64,
        *,
        depth: int | None = 2,
        cond_dim: int | None = None,
        activation: Callable = jnp.tanh,
    ):
        event_shape = check_shape(event_shape, "event_shape")
        size = math.prod(event_shape)
        widths = hidden_widths(hidden, depth if isinstance(hidden, int) else None)
        n_in = size + 1 + condition_size(cond_dim)
        self.mlp = MLP(key, n_in, size, widths, activation=activation)
        self.event_shape = event_shape

    def __call__(self, t, x, condition=None):
        parts = [x.reshape(-1), jnp.reshape(t, (1,)).astype(x.dtype)]
        if condition is not None:
            parts.append(condition.reshape(-1))
        return self.mlp(jnp.concatenate(parts)).reshape(self.event_shape)


class CNF(AbstractBijection):
    """A continuous normalizing flow: the time-`t1` map of `dx/dt = vector_field(t, x)`.

    **Arguments:**

    - `vector_field`: a callable Module `(t, x) -> dx/dt` (or `(t, x, condition)` when
      `cond_shape` is set), e.g. [`MLPVectorField`][] or any closed-form field.
    - `event_shape`: the event shape; `cond_shape`: the condition's shape (default `None`).
    - `t0`, `t1`: integration interval.
    - `divergence`: `"exact"` (Jacobian trace, `d` JVPs per evaluation) or `"hutchinson"`
      (`num_probes` Rademacher probes, fixed along the solve; then `transform_and_log_det` and
      `inverse_and_log_det` need a keyword `key` and the log-det is an unbiased estimate).
    - `solver`: a diffrax solver (default `diffrax.Tsit5()`), with a PID step-size controller at
      `rtol`/`atol`, or fixed steps `dt0` if the solver is not adaptive.
    - `adjoint`: `"recursive"` (checkpointed backpropagation through the solver, exact gradients)
      or `"backsolve"` (continuous adjoint, constant memory), or a diffrax adjoint.
    - `max_steps`: diffrax's step budget (a failed solve raises at run time).
    """

    vector_field: Callable
    event_shape: Shape = eqx.field(static=True)
    cond_shape: Shape | None = eqx.field(static=True)
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)
    divergence: str = eqx.field(static=True)
    num_probes: int = eqx.field(static=True)
    solver: diffrax.AbstractSolver
    adjoint: diffrax.AbstractAdjoint
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    dt0: float | None = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)

    def __init__(
        self,
        vector_field: Callable,
        event_shape,
        *,
        cond_shape=None,
        t0: float = 0.0,
        t1: float = 1.0,
        divergence: Literal["exact", "hutchinson"] = "exact",
        num_probes: int = 1,
        solver: diffrax.AbstractSolver | None = None,
        adjoint="recursive",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        dt0: float | None = None,
        max_steps: int = 4096,
    ):
        if not callable(vector_field):
            raise TypeError("`vector_field` must be callable as vector_field(t, x).")
        if divergence not in ("exact", "hutchinson"):
            raise ValueError(f"`divergence` must be 'exact' or 'hutchinson', got {divergence!r}.")
        if not float(t1) != float(t0):
            raise ValueError("`t0` and `t1` must differ.")
        if adjoint == "recursive":
            adjoint = diffrax.RecursiveCheckpointAdjoint()
        elif adjoint == "backsolve":
            adjoint = diffrax.BacksolveAdjoint()
        elif not isinstance(adjoint, diffrax.AbstractAdjoint):
            raise ValueError(
                f"`adjoint` must be 'recursive', 'backsolve' or a diffrax adjoint, got {adjoint!r}."
            )
        solver = diffrax.Tsit5() if solver is None else solver
        if not isinstance(solver, diffrax.AbstractSolver):
            raise TypeError(f"`solver` must be a diffrax solver, got {type(solver).__name__}.")
        adaptive = isinstance(solver, diffrax.AbstractAdaptiveSolver)
        if not adaptive and dt0 is None:
            raise ValueError("a non-adaptive `solver` needs a fixed step `dt0`.")
        self.vector_field = vector_field
        self.event_shape = check_shape(event_shape, "event_shape")
        self.cond_shape = None if cond_shape is None else check_shape(cond_shape, "cond_shape")
        self.t0, self.t1 = float(t0), float(t1)
        self.divergence = divergence
        self.num_probes = check_int(num_probes, "num_probes")
        self.solver = solver
        self.adjoint = adjoint
        self.rtol, self.atol = float(rtol), float(atol)
        self.dt0 = None if dt0 is None else float(dt0)
        self.max_steps = check_int(max_steps, "max_steps")

    @property
    def stochastic_log_det(self) -> bool:
        return self.divergence == "hutchinson"

    def _solve(self, x, condition, key, forward: bool):
        if self.divergence == "hutchinson":
            if key is None:
                raise ValueError("a CNF with divergence='hutchinson' needs a keyword `key`.")
            probes = sample_probes(key, x.shape, num_probes=self.num_probes, dtype=x.dtype)
        elif key is not None:
            raise ValueError("`key` is only used with divergence='hutchinson'.")

        exact = self.divergence == "exact"
        conditional = self.cond_shape is not None

        # everything differentiable goes through `args` (BacksolveAdjoint needs it so)
        def field(t, z, args):
            vector_field, cond = args
            return vector_field(t, z, cond) if conditional else vector_field(t, z)

        ta, tb = (self.t0, self.t1) if forward else (self.t1, self.t0)
        if isinstance(self.solver, diffrax.AbstractAdaptiveSolver):
            controller = diffrax.PIDController(rtol=self.rtol, atol=self.atol)
            dt0 = None if self.dt0 is None else math.copysign(self.dt0, tb - ta)
        else:
            controller = diffrax.ConstantStepSize()
            assert self.dt0 is not None  # required for a non-adaptive solver (checked at init)
            dt0 = math.copysign(self.dt0, tb - ta)
        return integrate_with_divergence(
            field,
            x,
            ta,
            tb,
            args=(self.vector_field, condition),
            probes=None if exact else probes,
            solver=self.solver,
            stepsize_controller=controller,
            dt0=dt0,
            max_steps=self.max_steps,
            adjoint=self.adjoint,
        )

    def transform_and_log_det(self, x, condition=None, *, key: Key | None = None):
        x, condition = check_input(self, x, condition)
        return self._solve(x, condition, key, forward=True)

    def inverse_and_log_det(self, y, condition=None, *, key: Key | None = None):
        y, condition = check_input(self, y, condition, "y")
        return self._solve(y, condition, key, forward=False)


def continuous_flow(
    key: Key,
    dim: int,
    hidden=64,
    *,
    depth: int = 2,
    cond_dim: int | None = None,
    activation: Callable = jnp.tanh,
    divergence: Literal["exact", "hutchinson"] = "exact",
    num_probes: int = 1,
    solver: diffrax.AbstractSolver | None = None,
    adjoint="recursive",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    base=None,
) -> Flow:
    """A continuous normalizing flow on `R^dim` with an [`MLPVectorField`][] (starts as the
    identity). See [`CNF`][] for the solver options.

    It trains with [`fit_max_likelihood`][] and [`fit_reverse_kl`][] like any flow; with
    `divergence="hutchinson"` the fits draw fresh probes for every point and step (unbiased
    log-likelihood gradients at `num_probes` vector-Jacobian products per solver stage instead of
    `dim` Jacobian columns), and `Flow.log_density` needs a `key`.
    """
    dim = check_int(dim, "dim")
    field = MLPVectorField(
        key, (dim,), hidden, depth=depth, cond_dim=cond_dim, activation=activation
    )
    bij = CNF(
        field,
        (dim,),
        cond_shape=None if cond_dim is None else (int(cond_dim),),
        divergence=divergence,
        num_probes=num_probes,
        solver=solver,
        adjoint=adjoint,
        rtol=rtol,
        atol=atol,
    )
    return Flow(StandardNormal((dim,)) if base is None else base, bij)
