"""Divergence of vector fields: exact (Jacobian trace) and Hutchinson estimators.

Shared by `flows` (continuous normalizing flows) and `diffusion` (probability-flow likelihood),
which may not import each other. Fields act on ONE unbatched point.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp

from ._custom_types import Array, Key


def divergence_exact(fn: Callable[[Array], Array], x: Array) -> tuple[Array, Array]:
    """`(fn(x), div fn(x))` with the exact Jacobian trace (forward mode, `d` JVPs).

    `fn` maps a point of any shape to a point of the same shape.
    """
    flat = x.reshape(-1)

    def flat_fn(z):
        return fn(z.reshape(x.shape)).reshape(-1)

    out, jvp = jax.linearize(flat_fn, flat)
    eye = jnp.eye(flat.size, dtype=flat.dtype)
    diag = jax.vmap(lambda e: jnp.vdot(e, jvp(e)))(eye)
    return out.reshape(x.shape), jnp.sum(diag)


def divergence_hutchinson(
    fn: Callable[[Array], Array],
    x: Array,
    *,
    key: Key | None = None,
    probes: Array | None = None,
    num_probes: int = 1,
    distribution: Literal["rademacher", "gaussian"] = "rademacher",
) -> tuple[Array, Array]:
    """`(fn(x), estimate of div fn(x))` by Hutchinson's trace estimator `E[vᵀ J v]`.

    Either pass fixed `probes` of shape `(num_probes, *x.shape)` (e.g. held fixed along an ODE
    solve, as a CNF requires) or a `key` to draw `num_probes` of them. Unbiased for both
    Rademacher and Gaussian probes; Rademacher has lower variance.
    """
    if probes is None:
        if key is None:
            raise ValueError("`key` is required when `probes` is not given.")
        probes = sample_probes(
            key, x.shape, num_probes=num_probes, distribution=distribution, dtype=x.dtype
        )
    if probes.shape[1:] != x.shape:
        raise ValueError(f"`probes` must have shape (num_probes, *{x.shape}), got {probes.shape}.")
    out, vjp = jax.vjp(fn, x)
    est = jax.vmap(lambda v: jnp.vdot(vjp(v)[0], v))(probes)
    return out, jnp.mean(est)


def sample_probes(
    key: Key,
    shape: tuple[int, ...],
    *,
    num_probes: int = 1,
    distribution: Literal["rademacher", "gaussian"] = "rademacher",
    dtype=None,
) -> Array:
    """Draw Hutchinson probe vectors of shape `(num_probes, *shape)`."""
    dtype = dtype or jnp.result_type(float)
    if num_probes < 1:
        raise ValueError(f"`num_probes` must be >= 1, got {num_probes}.")
    if distribution == "rademacher":
        return jax.random.rademacher(key, (num_probes, *shape), dtype=dtype)
    if distribution == "gaussian":
        return jax.random.normal(key, (num_probes, *shape), dtype=dtype)
    raise ValueError(f"`distribution` must be 'rademacher' or 'gaussian', got {distribution!r}.")


def integrate_with_divergence(
    vector_field: Callable,
    x: Array,
    t0,
    t1,
    *,
    args=None,
    probes: Array | None = None,
    solver,
    stepsize_controller,
    dt0,
    max_steps: int,
    adjoint=None,
    throw: bool = True,
) -> tuple[Array, Array]:
    """The augmented ODE of continuous normalizing flows and probability-flow likelihoods:
    integrate `dz/dt = vector_field(t, z, args)` from `z(t0) = x` to `t1` together with
    `d delta/dt = div vector_field`, and return `(z(t1), delta(t1))`, so
    `log p_{t0}(x) = log p_{t1}(z(t1)) + delta(t1)`.

    The divergence is exact (`probes=None`, `d` JVPs per evaluation) or Hutchinson's estimate
    with the given `probes` of shape `(num_probes, *x.shape)`, held fixed along the solve.
    `args` reach the field through diffrax's `args` (a continuous adjoint differentiates
    through them). `solver`, `stepsize_controller`, `dt0`, `max_steps` and `adjoint` (default
    diffrax's checkpointed adjoint) are diffrax's; ONE unbatched `x`.
    """
    import diffrax  # below flows and diffusion, which both depend on it

    def rhs(t, state, augmented_args):
        z, _ = state
        field_args, field_probes = augmented_args
        fn = lambda zz: vector_field(t, zz, field_args)
        if field_probes is None:
            return divergence_exact(fn, z)
        return divergence_hutchinson(fn, z, probes=field_probes)

    kwargs = {} if adjoint is None else {"adjoint": adjoint}
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(rhs),
        solver,
        t0,
        t1,
        dt0,
        (x, jnp.zeros((), x.dtype)),
        args=(args, probes),
        stepsize_controller=stepsize_controller,
        max_steps=max_steps,
        throw=throw,
        **kwargs,
    )
    assert sol.ys is not None  # the default SaveAt(t1=True) saves the end state
    z, delta = sol.ys
    return z[-1], delta[-1]
