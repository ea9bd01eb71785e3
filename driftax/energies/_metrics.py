"""Metrics of fit between two sample sets: MMD with a stated kernel and the energy distance.

Shared input checks for every `_metrics_*.py` file live here too. Samples are arrays of shape
`(n, d)`: `n` points of dimension `d` (flatten event shapes first).
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from .._checks import check_finite_array as check_finite_array
from .._custom_types import Array, Float, Scalar

_KERNELS = ("rbf", "imq", "energy")
# Largest number of (pair, coordinate) differences held in memory at once by the pairwise sums.
_BLOCK_ELEMENTS = 1 << 22
# At most this many points of each sample enter the median heuristic.
_MEDIAN_MAX_POINTS = 1000


def is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def as_float(x) -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def as_samples(x, name: str, *, min_n: int = 1) -> Float[Array, "n d"]:
    """Check and return a sample set of shape `(n, d)` as a floating array.

    Raises a `ValueError` naming the argument for a wrong number of axes, fewer than `min_n`
    points, zero dimensions or (for concrete arrays) non-finite values.
    """
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(
            f"`{name}` must be a 2-D array of samples with shape (n, d), got shape "
            f"{tuple(x.shape)}; reshape 1-D data to (n, 1) and flatten event shapes."
        )
    if x.shape[0] < min_n:
        raise ValueError(
            f"`{name}` must contain at least {min_n} sample(s), got {x.shape[0]} "
            f"(shape {tuple(x.shape)})."
        )
    if x.shape[1] == 0:
        raise ValueError(f"`{name}` must have at least one dimension, got shape {tuple(x.shape)}.")
    x = as_float(x)
    check_finite_array(x, name)
    return x


def as_pair(x, y, *, min_n: int = 1) -> tuple[Array, Array]:
    """Check two sample sets with the same dimension; promote them to a common dtype."""
    x = as_samples(x, "x", min_n=min_n)
    y = as_samples(y, "y", min_n=min_n)
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"`x` and `y` must have the same dimension, got x of shape {tuple(x.shape)} and "
            f"y of shape {tuple(y.shape)}."
        )
    dtype = jnp.result_type(x.dtype, y.dtype)
    return x.astype(dtype), y.astype(dtype)


def as_values(x, name: str, *, min_n: int = 1) -> Float[Array, " n"]:
    """Check and return a 1-D array of scalar values (energies, distances, ...)."""
    x = jnp.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"`{name}` must be a 1-D array, got shape {tuple(x.shape)}.")
    if x.shape[0] < min_n:
        raise ValueError(f"`{name}` must contain at least {min_n} value(s), got {x.shape[0]}.")
    x = as_float(x)
    check_finite_array(x, name)
    return x


def _safe_sqrt(s: Array) -> Array:
    """`sqrt(s)` for `s >= 0` whose gradient is finite at 0."""
    pos = s > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, s, 1.0)), 0.0)


def _block_size(n_rows: int, n_cols: int, d: int) -> int:
    return max(1, min(n_rows, _BLOCK_ELEMENTS // max(1, n_cols * d)))


def pairwise_sum(fn, a: Array, b: Array) -> Scalar:
    """`sum_{i, j} fn(|a_i - b_j|²)` in row blocks, so memory stays bounded for large sets."""
    b_rows, d = b.shape

    def row(ai):
        return jnp.sum(fn(jnp.sum((ai - b) ** 2, axis=-1)))

    rows = jax.lax.map(row, a, batch_size=_block_size(a.shape[0], b_rows, d))
    return jnp.sum(rows)


def _stride_subset(x: Array) -> Array:
    stride = -(-x.shape[0] // _MEDIAN_MAX_POINTS)
    return x[::stride]


@jax.jit
def _median_distance(x: Array, y: Array) -> Scalar:
    z = jnp.concatenate([_stride_subset(x), _stride_subset(y)])
    i, j = np.triu_indices(z.shape[0], k=1)
    return jnp.median(_safe_sqrt(jnp.sum((z[i] - z[j]) ** 2, axis=-1)))


def median_heuristic(x, y) -> Scalar:
    """The median heuristic bandwidth: the median Euclidean distance between distinct points
    of the pooled sample `[x; y]`.

    When a set has more than 1000 points, an evenly strided subset of at most 1000 of its
    points enters the median (so the cost stays O(2000²)).

    **Arguments:**

    - `x`, `y`: samples of shapes `(n, d)` and `(m, d)`.

    **Returns:** a scalar array.
    """
    x, y = as_pair(x, y)
    if x.shape[0] + y.shape[0] < 2:
        raise ValueError("`x` and `y` together must hold at least two points for the median.")
    return _median_distance(x, y)


def _kernel_fn(kernel: str, bandwidth: Array | float):
    if kernel == "rbf":
        return lambda s: jnp.exp(-0.5 * s / bandwidth**2)
    if kernel == "imq":
        return lambda s: jax.lax.rsqrt(1.0 + s / bandwidth**2)
    return lambda s: -_safe_sqrt(s)


class MMDResult(eqx.Module):
    """The squared maximum mean discrepancy between two sample sets, with its kernel stated.

    **Fields:**

    - `unbiased`: the unbiased U-statistic estimate of MMD² (can be slightly negative).
    - `biased`: the biased V-statistic estimate of MMD² (always >= 0 for these kernels).
    - `bandwidth`: the bandwidth `h` used (NaN for the `"energy"` kernel).
    - `kernel`: `"rbf"`, `"imq"` or `"energy"` (formulas in [`mmd`][]).
    - `bandwidth_rule`: `"given"`, `"median"` (median heuristic) or `"none"` (energy kernel).
    """

    unbiased: Scalar
    biased: Scalar
    bandwidth: Scalar
    kernel: str = eqx.field(static=True)
    bandwidth_rule: str = eqx.field(static=True)


@functools.partial(jax.jit, static_argnames=("kernel",))
def _mmd_core(x: Array, y: Array, bandwidth: Array, kernel: str) -> tuple[Scalar, Scalar]:
    fn = _kernel_fn(kernel, bandwidth)
    n, m = x.shape[0], y.shape[0]
    k_diag = fn(jnp.zeros((), x.dtype))
    sxx = pairwise_sum(fn, x, x)
    syy = pairwise_sum(fn, y, y)
    sxy = pairwise_sum(fn, x, y)
    biased = sxx / n**2 + syy / m**2 - 2.0 * sxy / (n * m)
    unbiased = (
        (sxx - n * k_diag) / (n * (n - 1))
        + (syy - m * k_diag) / (m * (m - 1))
        - 2.0 * sxy / (n * m)
    )
    return unbiased, biased


def mmd(x, y, *, kernel: str = "rbf", bandwidth=None) -> MMDResult:
    r"""Squared maximum mean discrepancy between the samples `x` and `y`, with a stated kernel.

    Kernels, with `s = |x - y|²` and bandwidth `h`:

    - `"rbf"` (Gaussian): `k = exp(-s / (2 h²))`;
    - `"imq"` (inverse multiquadric): `k = (1 + s / h²)^(-1/2)`;
    - `"energy"` (distance-induced): `k = -sqrt(s)`; then MMD² equals the energy distance
      `2 E|X - Y| - E|X - X'| - E|Y - Y'|` (biased estimate == [`energy_distance`][]).
      It takes no bandwidth.

    With `bandwidth=None` the RBF and IMQ kernels use the median heuristic
    ([`median_heuristic`][]: the median distance between distinct points of the pooled sample).
    Both the unbiased U-statistic
    `1/(n(n-1)) Σ_{i≠j} k(x_i, x_j) + 1/(m(m-1)) Σ_{i≠j} k(y_i, y_j) - 2/(nm) Σ_{i,j} k(x_i, y_j)`
    and the biased V-statistic (all pairs, `1/n²`, `1/m²`) are returned. Pairwise sums run in
    row blocks (memory O(block · m · d)); cost O((n + m)² d).

    **Arguments:**

    - `x`, `y`: samples of shapes `(n, d)` and `(m, d)` with `n, m >= 2`.
    - `kernel`: `"rbf"`, `"imq"` or `"energy"`.
    - `bandwidth`: a positive scalar `h`, or `None` for the median heuristic.

    **Returns:** an [`MMDResult`][] with `unbiased`, `biased`, `bandwidth`, `kernel` and
    `bandwidth_rule`.

    **Example:**

    ```python
    import jax
    import driftax as dx

    kx, ky = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (500, 2))
    y = jax.random.normal(ky, (500, 2)) + 0.5
    res = dx.energies.mmd(x, y, kernel="rbf", bandwidth=1.0)
    print(res.unbiased, res.kernel)
    ```
    """
    if kernel not in _KERNELS:
        raise ValueError(f"`kernel` must be one of {_KERNELS}, got {kernel!r}.")
    x, y = as_pair(x, y, min_n=2)
    if kernel == "energy":
        if bandwidth is not None:
            raise ValueError("`bandwidth` must be None for kernel='energy' (it has no bandwidth).")
        h = jnp.asarray(jnp.nan, x.dtype)
        rule = "none"
    elif bandwidth is None:
        h = _median_distance(x, y)
        h = jnp.where(h > 0, h, jnp.ones_like(h))  # all points equal: any bandwidth gives 0
        rule = "median"
    else:
        h = jnp.asarray(bandwidth, x.dtype)
        if h.ndim != 0:
            raise ValueError(f"`bandwidth` must be a scalar, got shape {tuple(h.shape)}.")
        if is_concrete(h) and not bool(jnp.isfinite(h) & (h > 0)):
            raise ValueError(f"`bandwidth` must be finite and positive, got {bandwidth!r}.")
        rule = "given"
    unbiased, biased = _mmd_core(x, y, h, kernel)
    return MMDResult(
        unbiased=unbiased, biased=biased, bandwidth=h, kernel=kernel, bandwidth_rule=rule
    )


@functools.partial(jax.jit, static_argnames=("unbiased",))
def _energy_core(x: Array, y: Array, unbiased: bool) -> Scalar:
    fn = _kernel_fn("energy", jnp.nan)
    n, m = x.shape[0], y.shape[0]
    dxx = -pairwise_sum(fn, x, x)
    dyy = -pairwise_sum(fn, y, y)
    dxy = -pairwise_sum(fn, x, y)
    if unbiased:
        return 2.0 * dxy / (n * m) - dxx / (n * (n - 1)) - dyy / (m * (m - 1))
    return 2.0 * dxy / (n * m) - dxx / n**2 - dyy / m**2


def energy_distance(x, y, *, unbiased: bool = False) -> Scalar:
    """The (squared) energy distance `2 E|X - Y| - E|X - X'| - E|Y - Y'|` (Székely).

    By default the V-statistic of the two empirical measures (always >= 0, zero iff the
    empirical measures are equal); with `unbiased=True` the U-statistic, which excludes
    `i = j` pairs and is unbiased for the population value. Note `scipy.stats.energy_distance`
    returns the square root of the V-statistic (in 1-D).

    **Arguments:**

    - `x`, `y`: samples of shapes `(n, d)` and `(m, d)` (`n, m >= 2` when `unbiased`).
    - `unbiased`: U-statistic instead of V-statistic.

    **Returns:** a scalar array.
    """
    x, y = as_pair(x, y, min_n=2 if unbiased else 1)
    return _energy_core(x, y, bool(unbiased))
