"""Thinning a sample to few points with a small MMD to the whole: kernel thinning (KT-split +
KT-swap, any kernel, KT+), Compress++, and Stein thinning from scores."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..._checks import check_choice, check_hyper, check_int
from ..._custom_types import Array, Key
from ...energies._base import AbstractEnergy
from ...energies._metrics import _median_distance, as_samples

KERNELS = ("rbf", "laplace", "imq")
"""Kernels by name, with `s = |x - y|²` and bandwidth `h`: `"rbf"` `exp(-s / (2h²))`,
`"laplace"` `exp(-√s / h)`, `"imq"` `(1 + s / h²)^(-1/2)`."""


def _base_kernel(name: str, h) -> Callable:
    def rbf(x, y):
        return jnp.exp(-0.5 * jnp.sum((x - y) ** 2) / h**2)

    def laplace(x, y):
        s = jnp.sum((x - y) ** 2)
        pos = s > 0
        return jnp.exp(-jnp.where(pos, jnp.sqrt(jnp.where(pos, s, 1.0)), 0.0) / h)

    def imq(x, y):
        return jax.lax.rsqrt(1.0 + jnp.sum((x - y) ** 2) / h**2)

    return {"rbf": rbf, "laplace": laplace, "imq": imq}[name]


def _rows(k: Callable, a: Array, b: Array) -> Array:
    """The kernel matrix `k(a_i, b_j)`, `(len(a), len(b))`."""
    return jax.vmap(lambda x: jax.vmap(lambda y: k(x, y))(b))(a)


def _mean_embedding(k: Callable, x: Array) -> Array:
    """`μ_i = 1/n Σ_j k(x_i, x_j)` for every point (rows in blocks: memory O(block · n))."""
    n = x.shape[0]
    block = max(1, min(n, (1 << 22) // max(1, n * x.shape[1])))
    return jax.lax.map(lambda xi: jnp.mean(jax.vmap(lambda y: k(xi, y))(x)), x, batch_size=block)


# ---------------------------------------------------------------------------------------------
# KT-split: halve one coreset by a self-balancing signed walk in the RKHS
# ---------------------------------------------------------------------------------------------


def _halve(k_split: Callable, x: Array, idx: Array, key: Key, log_term: Array):
    """Split the points `x[idx]` (an even number) into two halves whose kernel mean embeddings
    nearly agree (KT-split, Dwivedi & Mackey 2021, Algorithm 1a): consecutive pairs are
    assigned one point to each half, with signs chosen by the self-balancing walk so that the
    signed sum `ψ` of kernel differences stays small. Returns the two halves' indices."""
    pts = x[idx]
    n = pts.shape[0]
    u = jax.random.uniform(key, (n // 2,), x.dtype)

    def body(carry, i):
        psi, sig2 = carry
        a, b = 2 * i, 2 * i + 1
        ka = jax.vmap(lambda y: k_split(pts[a], y))(pts)
        kb = jax.vmap(lambda y: k_split(pts[b], y))(pts)
        b2 = jnp.maximum(ka[a] + kb[b] - 2.0 * ka[b], 0.0)
        bnorm = jnp.sqrt(b2)
        thresh = jnp.maximum(bnorm * jnp.sqrt(sig2 * 2.0 * log_term), b2)
        safe = jnp.where(thresh > 0, thresh, 1.0)
        sig2 = sig2 + b2 * jnp.maximum(1.0 + (b2 - 2.0 * thresh) * sig2 / safe**2, 0.0)
        alpha = psi[a] - psi[b]
        prob = jnp.where(thresh > 0, jnp.clip(0.5 * (1.0 - alpha / safe), 0.0, 1.0), 0.5)
        plus = u[i] < prob
        psi = psi + jnp.where(plus, 1.0, -1.0) * (ka - kb)
        first = jnp.where(plus, idx[a], idx[b])
        second = jnp.where(plus, idx[b], idx[a])
        return (psi, sig2), (first, second)

    init = (jnp.zeros((n,), x.dtype), jnp.zeros((), x.dtype))
    _, (first, second) = jax.lax.scan(body, init, jnp.arange(n // 2))
    return first, second


def _split(k_split, x, idx, key, rounds: int, delta: float):
    """`rounds` KT-split rounds: `(2^rounds, len(idx) / 2^rounds)` candidate coresets."""
    n = idx.shape[0]
    # a union bound over the n/2 pair decisions of each of the `rounds` rounds
    log_term = jnp.asarray(math.log(2.0 * max(1, rounds) * n / 2 / delta), x.dtype)
    sets = idx[None, :]
    for r in range(rounds):
        keys = jax.random.split(jax.random.fold_in(key, r), sets.shape[0])
        first, second = jax.vmap(lambda s, kk: _halve(k_split, x, s, kk, log_term))(sets, keys)
        sets = jnp.concatenate([first, second], axis=0)
    return sets


# ---------------------------------------------------------------------------------------------
# KT-swap: pick the best candidate, then greedily improve every slot
# ---------------------------------------------------------------------------------------------


def _swap(k: Callable, x: Array, mu: Array, candidates: Array) -> Array:
    """KT-swap: the candidate coreset (rows of `candidates`) closest in MMD to the whole `x`,
    then each of its points replaced in turn by the point of `x` that most lowers the MMD.
    The returned indices may repeat a point."""
    m = candidates.shape[1]

    def mmd2_part(s):  # MMD² up to the constant mean(K_xx)
        gram = _rows(k, x[s], x[s])
        return -2.0 * jnp.mean(mu[s]) + jnp.sum(gram) / m**2

    best = candidates[jnp.argmin(jax.lax.map(mmd2_part, candidates))]
    k_sx = _rows(k, x[best], x)  # (m, n): k(coreset point, every point)
    k_diag = jax.vmap(lambda y: k(y, y))(x)

    def slot(j, carry):
        s, k_sx = carry
        keep = jnp.arange(m) != j
        rest_sum = jnp.sum(jnp.where(keep[:, None], k_sx, 0.0), axis=0)  # (n,)
        a = jnp.sum(jnp.where(keep, mu[s], 0.0))
        b = jnp.sum(jnp.where(keep[:, None] & keep[None, :], k_sx[:, s], 0.0))
        value = -2.0 * (a + mu) / m + (b + 2.0 * rest_sum + k_diag) / m**2
        c = jnp.argmin(value)
        return s.at[j].set(c), k_sx.at[j].set(jax.vmap(lambda y: k(x[c], y))(x))

    s, _ = jax.lax.fori_loop(0, m, slot, (best, k_sx))
    return s


@functools.partial(
    jax.jit, static_argnames=("kernel", "split", "rounds", "method", "g", "swap", "delta")
)
def _thin(x, h, key, *, kernel, split, rounds, method, g, swap, delta):
    k = kernel.fn if isinstance(kernel, _Callable) else _base_kernel(kernel, h)
    if split == "kt+":  # target kernel plus its square root (for the Gaussian: bandwidth h/√2)
        root = _base_kernel("rbf", h / jnp.sqrt(2.0))

        def k_split(a, b):
            return k(a, b) + root(a, b)
    else:
        k_split = k
    n = x.shape[0]
    if method == "kt":
        n_use = (n >> rounds) << rounds
        idx = jnp.round(jnp.linspace(0, n - 1, n_use)).astype(jnp.int32)
        candidates = _split(k_split, x, idx, key, rounds, delta)
    else:  # Compress++: compress to 2^g √n' points, then g KT rounds
        size = 1 << (2 * rounds)  # n' = num_points² = 4^rounds
        idx = jnp.round(jnp.linspace(0, n - 1, size)).astype(jnp.int32)
        leaf = 1 << (2 * g)
        sets = idx.reshape(size // leaf, leaf)
        level = 0
        while sets.shape[0] > 1:
            sets = sets.reshape(sets.shape[0] // 4, -1)
            keys = jax.random.split(jax.random.fold_in(key, 1000 + level), sets.shape[0])
            log_term = jnp.asarray(math.log(2.0 * sets.shape[1] / delta), x.dtype)
            sets = jax.vmap(lambda s, kk, lt=log_term: _halve(k_split, x, s, kk, lt)[0])(sets, keys)
            level += 1
        candidates = _split(k_split, x, sets[0], key, g, delta)
    # standard thinning (evenly spaced points) is always a candidate too
    m = candidates.shape[1]
    standard = jnp.round(jnp.linspace(n - 1, 0, m)[::-1]).astype(jnp.int32)
    candidates = jnp.concatenate([candidates, standard[None]], axis=0)
    if not swap:
        return candidates[0]
    mu = _mean_embedding(k, x)
    return _swap(k, x, mu, candidates)


def _as_points(samples, name: str = "samples") -> tuple[Array, tuple]:
    """A sample set as `(n, d)` plus its event shape: an array `(n, *event)` or any driftax
    result (its kernel samples, chains / particles and draws flattened)."""
    arr = None
    for attr in ("kernel_samples", "samples"):
        if hasattr(samples, attr) and not isinstance(samples, (np.ndarray, jax.Array)):
            arr = getattr(samples, attr)
            if arr is None:
                raise ValueError(f"`{name}` holds no stored samples (store_samples=False).")
            arr = jnp.asarray(arr)
            arr = arr.reshape(-1, *arr.shape[2:])
            break
    if arr is None:
        arr = jnp.asarray(samples)
    if arr.ndim < 2:
        raise ValueError(f"`{name}` must have shape (n, *event_shape), got {tuple(arr.shape)}.")
    event = tuple(arr.shape[1:])
    return as_samples(arr.reshape(arr.shape[0], -1), name), event


def _selection(samples, num_points) -> tuple[Array, tuple, int]:
    """The pooled points, their event shape and the checked output size `1 ≤ num_points ≤ n`."""
    x, event = _as_points(samples)
    num_points = check_int(num_points, "num_points", 1)
    if num_points > x.shape[0]:
        raise ValueError(f"`num_points` ({num_points}) must not exceed the {x.shape[0]} samples.")
    return x, event, num_points


def _bandwidth(x: Array, bandwidth) -> Array:
    if bandwidth is None:
        h = _median_distance(x[::2], x[1::2])
        return jnp.where(h > 0, h, jnp.ones_like(h))
    check_hyper(bandwidth, "bandwidth")
    return jnp.asarray(bandwidth, x.dtype)


def kernel_thin(
    samples,
    num_points: int,
    *,
    key: Key,
    kernel: str | Callable = "rbf",
    bandwidth=None,
    method: str = "kt",
    split_kernel: str = "target",
    oversampling: int = 2,
    delta: float = 0.5,
    swap: bool = True,
    return_indices: bool = False,
):
    r"""Kernel thinning (Dwivedi & Mackey 2021; generalized kernels, 2022): `num_points` of
    `samples` whose empirical distribution is close in MMD to that of all `n` samples —
    better than i.i.d. or standard (evenly spaced) thinning, whose MMD decays like
    `num_points^{-1/2}` (kernel thinning reaches about `n^{-1/2}` up to logs with
    `num_points = √n`).

    - **KT-split** halves the input `m = ⌊log₂(n / num_points)⌋` times: every halving walks
      through consecutive pairs and puts one point in each half, the sign chosen at random
      with a bias (the self-balancing walk) that keeps the difference of the two halves'
      kernel embeddings small. This yields `2^m` candidate coresets of `num_points` points
      (the input is first reduced to `num_points · 2^m` evenly spaced points).
    - **KT-swap** picks the candidate (or the standard thinning) with the smallest MMD to all
      `n` points, then replaces each of its points in turn by the input point that lowers that
      MMD most (points may repeat).

    `method="compress++"` (Shetty, Dwivedi & Mackey 2022) replaces the O(n²) split by
    Compress: blocks of `4^oversampling` points are halved bottom-up in groups of four down to
    `2^oversampling · num_points` points, then `oversampling` KT rounds and KT-swap finish;
    it needs `num_points` a power of two and uses `num_points²` evenly spaced input points.
    The swap step evaluates the kernel mean embedding of all `n` points: O(n²) kernel
    evaluations (in blocks), O(num_points · n) memory.

    **Arguments:**

    - `samples`: an array `(n, *event_shape)`, or a driftax result (`SampleResult`,
      `ParticleResult`, ...), whose stored draws are pooled over chains / particles.
    - `num_points`: the output size, `1 ≤ num_points ≤ n`.
    - `key`: a JAX PRNG key (same key → same points).
    - `kernel`: `"rbf"` (default), `"laplace"`, `"imq"` (see `KERNELS`), or a function
      `k(x, y)` of two flat points returning a scalar (any positive-definite kernel).
    - `bandwidth`: positive `h`, or `None` for the median pairwise distance.
    - `method`: `"kt"` or `"compress++"`.
    - `split_kernel`: `"target"` (split with the kernel itself, target KT) or `"kt+"` (split
      with the kernel plus its square-root kernel; only for `kernel="rbf"`).
    - `oversampling`: Compress++'s `g` (≥ 1).
    - `delta`: the failure probability of the split's thresholds, in (0, 1).
    - `swap`: run KT-swap (default) or return the first KT-split coreset.
    - `return_indices`: also return the selected rows' indices into the pooled samples.

    **Returns:** the selected points `(num_points, *event_shape)` (and their indices).

    **Example:**

    ```python
    import jax
    import driftax as dx

    x = jax.random.normal(jax.random.key(0), (1024, 2))
    coreset = dx.samplers.kernel_thin(x, 32, key=jax.random.key(1))
    coreset.shape  # (32, 2)
    ```
    """
    x, event, num_points = _selection(samples, num_points)
    n = x.shape[0]
    method = check_choice(method, "method", ("kt", "compress++"))
    split_kernel = check_choice(split_kernel, "split_kernel", ("target", "kt+"))
    if not (isinstance(delta, (int, float)) and 0.0 < delta < 1.0):
        raise ValueError(f"`delta` must be in (0, 1), got {delta!r}.")
    oversampling = check_int(oversampling, "oversampling", 1)
    if callable(kernel):
        if split_kernel == "kt+":
            raise ValueError("`split_kernel='kt+'` needs `kernel='rbf'`.")
        fn = kernel
        h = jnp.ones((), x.dtype)
        kernel_static = _Callable(fn)
    else:
        kernel = check_choice(kernel, "kernel", KERNELS)
        if split_kernel == "kt+" and kernel != "rbf":
            raise ValueError("`split_kernel='kt+'` needs `kernel='rbf'`.")
        h = _bandwidth(x, bandwidth)
        kernel_static = kernel
    if method == "kt":
        rounds = int(math.floor(math.log2(n / num_points)))
        g = 0
    else:
        rounds = int(round(math.log2(num_points)))
        if (1 << rounds) != num_points:
            raise ValueError(
                f"`num_points` must be a power of two for method='compress++', got {num_points}."
            )
        if num_points**2 > n:
            raise ValueError(
                f"method='compress++' needs num_points² ({num_points**2}) <= n ({n}) samples."
            )
        g = min(oversampling, rounds)
    if num_points == n:
        idx = jnp.arange(n)
    else:
        idx = _thin(
            x, h, key, kernel=kernel_static, split=split_kernel, rounds=rounds,
            method=method, g=g, swap=bool(swap), delta=float(delta),
        )  # fmt: skip
    points = x[idx].reshape(num_points, *event)
    return (points, idx) if return_indices else points


class _Callable:
    """A user kernel function as a hashable static argument (by identity)."""

    def __init__(self, fn):
        self.fn = fn

    def __hash__(self):
        return id(self.fn)

    def __eq__(self, other):
        return isinstance(other, _Callable) and other.fn is self.fn


# ---------------------------------------------------------------------------------------------
# Stein thinning: greedy kernel Stein discrepancy minimization
# ---------------------------------------------------------------------------------------------


def stein_kernel(x: Array, y: Array, sx: Array, sy: Array, h) -> Array:
    r"""The Langevin Stein kernel of the IMQ base kernel `k = (1 + |x - y|²/h²)^(-1/2)`:
    `k_p(x, y) = ∇_x·∇_y k + ∇_x k · s(y) + ∇_y k · s(x) + k s(x)·s(y)` for two flat points
    `x`, `y` with scores `sx`, `sy` (closed form)."""
    beta = -0.5
    r = x - y
    r2 = jnp.sum(r**2)
    u = 1.0 + r2 / h**2
    d = x.shape[0]
    k = u**beta
    grad_x = 2.0 * beta * u ** (beta - 1.0) * r / h**2  # ∇_x k; ∇_y k = -grad_x
    div = (
        -2.0 * beta * d * u ** (beta - 1.0) / h**2
        - 4.0 * beta * (beta - 1.0) * u ** (beta - 2.0) * r2 / h**4
    )
    return div + jnp.dot(grad_x, sy - sx) + k * jnp.dot(sx, sy)


@functools.partial(jax.jit, static_argnames=("num_points",))
def _stein_greedy(x, s, h, num_points):
    diag = jax.vmap(lambda a, sa: stein_kernel(a, a, sa, sa, h))(x, s)

    def body(acc, _):
        i = jnp.argmin(0.5 * diag + acc)
        row = jax.vmap(lambda b, sb: stein_kernel(x[i], b, s[i], sb, h))(x, s)
        return acc + row, i

    _, idx = jax.lax.scan(body, jnp.zeros_like(diag), None, length=num_points)
    return idx


def stein_thin(
    samples,
    num_points: int,
    *,
    energy: AbstractEnergy | None = None,
    scores=None,
    bandwidth=None,
    return_indices: bool = False,
):
    r"""Stein thinning (Riabiz et al. 2022): greedily pick `num_points` of `samples` that
    minimize the kernel Stein discrepancy to the target, using only its score — so it also
    corrects a biased or unconverged sample (e.g. a run still in burn-in, or an unadjusted
    sampler), unlike kernel thinning, which only compresses.

    Point `t` is `argmin_i [k_p(x_i, x_i)/2 + Σ_{s<t} k_p(x_{π_s}, x_i)]` with the Langevin
    Stein kernel `k_p` of the IMQ kernel `(1 + |x - y|²/h²)^(-1/2)` ;
    points may repeat. Cost O(n · num_points) kernel evaluations.

    **Arguments:**

    - `samples`: an array `(n, *event_shape)` or a driftax result (draws pooled).
    - `num_points`: the output size, `1 ≤ num_points ≤ n`.
    - `energy`: the target, whose `score` is evaluated at every sample; or
    - `scores`: the scores at the samples, same shape as `samples` (pooled the same way).
    - `bandwidth`: positive `h`, or `None` for the median pairwise distance.
    - `return_indices`: also return the indices of the selected points.

    **Returns:** the selected points `(num_points, *event_shape)` (and their indices).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    target = dx.energies.gaussian(jnp.zeros(2))
    x = jax.random.normal(jax.random.key(0), (500, 2)) + 0.5  # a biased sample
    pts = dx.samplers.stein_thin(x, 20, energy=target)
    ```
    """
    x, event, num_points = _selection(samples, num_points)
    n = x.shape[0]
    if (energy is None) == (scores is None):
        raise ValueError("pass exactly one of `energy` and `scores`.")
    if energy is not None:
        if not isinstance(energy, AbstractEnergy):
            raise TypeError(
                f"`energy` must be a driftax AbstractEnergy, got {type(energy).__name__}."
            )
        s = jax.vmap(lambda p: energy.score(p.reshape(event)))(x).reshape(n, -1).astype(x.dtype)
    else:
        s, _ = _as_points(scores, "scores")
        if s.shape != x.shape:
            raise ValueError(f"`scores` must match the samples' shape {x.shape}, got {s.shape}.")
    if not bool(jnp.all(jnp.isfinite(s))):
        raise ValueError("the scores at the samples must be finite.")
    h = _bandwidth(x, bandwidth)
    idx = _stein_greedy(x, s, h, num_points)
    points = x[idx].reshape(num_points, *event)
    return (points, idx) if return_indices else points
