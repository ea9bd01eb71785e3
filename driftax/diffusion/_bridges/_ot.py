"""Optimal-transport plans and couplings on minibatches: exact OT by the Hungarian algorithm
(scipy's `linear_sum_assignment` on the host, through `jax.pure_callback`) and entropic OT by
Sinkhorn (ott-jax). Cost: squared Euclidean `|x - y|^2` on the flattened events."""

from __future__ import annotations

import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from ..._custom_types import Array, Key


def _flat_pair(x, y, *, weights: bool = False):
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if x.ndim < 2 or y.ndim < 2:
        raise ValueError(
            f"`x` and `y` must be batches of shape (n, *event_shape), got {x.shape} and {y.shape}."
        )
    xf = x.reshape(x.shape[0], -1)
    yf = y.reshape(y.shape[0], -1)
    if xf.shape[1] != yf.shape[1]:
        raise ValueError(
            f"`x` and `y` must have the same event size, got {xf.shape[1]} and {yf.shape[1]}."
        )
    if xf.shape[0] != yf.shape[0] and not weights:
        raise ValueError(
            f"`x` and `y` have different batch sizes ({xf.shape[0]} and {yf.shape[0]}): give "
            "the weights `a` and `b` (entropic plan), or equal-size batches."
        )
    dtype = jnp.result_type(xf, yf, float)
    return xf.astype(dtype), yf.astype(dtype)


def squared_cost(x: Array, y: Array) -> Array:
    """The matrix `|x_i - y_j|^2` between two flat batches."""
    return (jnp.sum(x**2, -1)[:, None] + jnp.sum(y**2, -1)[None, :] - 2.0 * x @ y.T).clip(0.0)


def _assignment_host(cost):
    from scipy.optimize import linear_sum_assignment

    cost = np.asarray(cost, dtype=np.float64)
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(cost.shape[0], dtype=np.int32)
    perm[rows] = cols
    return perm


def exact_assignment(x: Array, y: Array) -> Array:
    """The optimal permutation `perm` (int32, shape `(n,)`) pairing `x[i]` with `y[perm[i]]`
    for two equal-size batches: it minimises `sum_i |x_i - y_perm(i)|^2` (exact OT between the
    two uniform empirical measures, whose optimal plans include a permutation). Solved on the
    host by the Hungarian algorithm (`scipy.optimize.linear_sum_assignment`) through
    `jax.pure_callback`, so it runs under `jit`, `vmap` (sequentially) and inside scans; no
    gradient flows through the assignment."""
    xf, yf = _flat_pair(x, y)
    cost = jax.lax.stop_gradient(squared_cost(xf, yf))
    out = jax.ShapeDtypeStruct((xf.shape[0],), jnp.int32)
    return jax.pure_callback(_assignment_host, out, cost, vmap_method="sequential")


def entropic_plan(
    x: Array,
    y: Array,
    *,
    epsilon: float,
    relative_epsilon: bool = False,
    a: Array | None = None,
    b: Array | None = None,
    threshold: float = 1e-4,
    max_iterations: int = 5000,
) -> Array:
    """The entropic-OT plan (ott-jax Sinkhorn) between the empirical measures `sum_i a_i
    delta_{x_i}` and `sum_j b_j delta_{y_j}` with cost `|x - y|^2` and regularization `epsilon`
    (absolute, or relative to the mean cost with `relative_epsilon=True`).

    Batches of different sizes need the weights `a`, `b` (each summing to 1); equal sizes
    default to uniform weights. Returns the plan matrix, shape `(n, m)` (rows sum to `a`,
    columns to `b`)."""
    from ott.geometry import pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    if not isinstance(epsilon, jax.core.Tracer) and not float(epsilon) > 0:
        raise ValueError(f"`epsilon` must be > 0, got {epsilon!r}.")
    xf, yf = _flat_pair(x, y, weights=a is not None and b is not None)
    geom = pointcloud.PointCloud(
        xf, yf, epsilon=epsilon, relative_epsilon="mean" if relative_epsilon else None
    )
    a = None if a is None else jnp.asarray(a, xf.dtype)
    b = None if b is None else jnp.asarray(b, xf.dtype)
    for name, w, n in (("a", a, xf.shape[0]), ("b", b, yf.shape[0])):
        if w is not None and w.shape != (n,):
            raise ValueError(f"`{name}` must have shape ({n},), got {w.shape}.")
    prob = linear_problem.LinearProblem(geom, a=a, b=b)
    out = sinkhorn.Sinkhorn(threshold=threshold, max_iterations=max_iterations)(prob)
    return jax.lax.stop_gradient(out.matrix)


def ot_coupling(
    key: Key, x: Array, y: Array, *, method: str = "exact", epsilon: float = 0.05
) -> Array:
    """Pair the batch `y` with the batch `x` by minibatch optimal transport (squared Euclidean
    cost); returns the paired `y` (same shape), row `i` being the partner of `x[i]`.

    - `method="exact"` (default): a PERMUTATION of `y`, the exact OT assignment (Hungarian
      algorithm, see [`exact_assignment`][]); `key` is unused.
    - `method="entropic"`: for each `x[i]`, a partner drawn from row `i` of the Sinkhorn plan
      (ott-jax; `epsilon` relative to the mean cost), i.e. a draw of the entropic plan's
      conditional: partners are drawn WITH replacement, so this is not a permutation.
    """
    if method not in ("exact", "entropic"):
        raise ValueError(f"`method` must be 'exact' or 'entropic', got {method!r}.")
    if method == "exact":
        return jnp.asarray(y)[exact_assignment(x, y)]
    plan = entropic_plan(x, y, epsilon=epsilon, relative_epsilon=True)
    idx = jax.random.categorical(key, jnp.log(plan + 1e-30), axis=1)
    return jnp.asarray(y)[idx]
