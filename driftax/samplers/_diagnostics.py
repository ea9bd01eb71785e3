"""Convergence diagnostics through ArviZ (rank-normalized split R-hat, bulk/tail ESS, MCSE)."""

from __future__ import annotations

import math

import numpy as np


def _arviz():
    import warnings

    try:
        # ArviZ >= 0.22 announces its coming refactor with a FutureWarning once a day on first
        # import; it is about ArviZ's own API, not the user's run, so it stays out of theirs.
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r"\s*ArviZ is undergoing", category=FutureWarning
            )
            import arviz as az
    except ImportError as e:  # pragma: no cover - arviz is a dependency of the diagnostics
        raise ImportError("diagnostics need ArviZ: `pip install arviz`.") from e
    return az


def _dataset(samples):
    az = _arviz()
    x = np.asarray(samples)
    if x.ndim < 2:
        raise ValueError(f"samples must have shape (num_chains, num_draws, ...), got {x.shape}.")
    if x.shape[1] < 4:
        raise ValueError(f"diagnostics need at least 4 draws per chain, got {x.shape[1]}.")
    return az.convert_to_dataset(x.astype(np.float64), group="posterior"), x.shape[2:]


def _values(ds, shape):
    return np.asarray(ds["x"].values).reshape(shape)


def _quiet(fn):
    """Run an ArviZ diagnostic without its NumPy warnings on degenerate (constant) chains: the
    result is `nan`/`inf` there, and the driver's health checks report frozen chains."""
    import functools
    import warnings

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            return fn(*args, **kwargs)

    return wrapper


@_quiet
def ess(samples, method: str = "bulk") -> np.ndarray:
    """Effective sample size per coordinate of `samples` `(num_chains, num_draws, *event)`;
    `method` is `"bulk"` or `"tail"` (Vehtari et al. 2021), summed over chains."""
    ds, shape = _dataset(samples)
    return _values(_arviz().ess(ds, method=method), shape)


@_quiet
def rhat(samples) -> np.ndarray:
    """Rank-normalized split R-hat per coordinate (needs ≥ 1 chain; ≥ 2 recommended)."""
    ds, shape = _dataset(samples)
    return _values(_arviz().rhat(ds), shape)


@_quiet
def mcse(samples, method: str = "mean") -> np.ndarray:
    """Monte Carlo standard error per coordinate of the mean (`"mean"`) or sd (`"sd"`)."""
    ds, shape = _dataset(samples)
    return _values(_arviz().mcse(ds, method=method), shape)


def batch_means_estimates(stats) -> dict[str, np.ndarray]:
    """Mean, sd, MCSE of the mean, ESS and R-hat per coordinate from streaming statistics
    (a `StreamStats`, no stored samples): the asymptotic variance from batch means (per chain,
    averaged over chains), ESS `= chains · n · W / σ²_as`, and the classic (non-split)
    Gelman–Rubin R-hat from the per-chain means and variances. Coarser than the rank-normalized
    ArviZ diagnostics; `nan` where undefined (fewer than 2 full batches, or 1 chain for R-hat)."""
    n = int(stats.count)
    mean_c = np.asarray(stats.mean, np.float64)
    num_chains = mean_c.shape[0]
    var_c = np.asarray(stats.m2, np.float64) / max(n - 1, 1)
    w = var_c.mean(axis=0)
    mean = mean_c.mean(axis=0)
    between = n * mean_c.var(axis=0, ddof=1) if num_chains > 1 else np.zeros_like(w)
    total_var = (n - 1) / max(n, 1) * w + between / max(n, 1)
    k = int(stats.num_batches)
    size = int(stats.batch_size)
    with np.errstate(divide="ignore", invalid="ignore"):
        if k >= 2:
            bm = np.asarray(stats.batch_sums, np.float64)[:, :k] / size
            sigma2 = size * bm.var(axis=1, ddof=1).mean(axis=0)
            ess = np.where(sigma2 > 0, num_chains * n * w / sigma2, np.nan)
            mcse = np.sqrt(sigma2 / (num_chains * n))
        else:
            ess = np.full_like(w, np.nan)
            mcse = np.full_like(w, np.nan)
        rhat = np.sqrt(total_var / w) if num_chains > 1 else np.full_like(w, np.nan)
        rhat = np.where(w > 0, rhat, np.nan)
    return dict(mean=mean, sd=np.sqrt(total_var), mcse=mcse, ess=ess, rhat=rhat)


def _sorted_to_z(order: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Normal scores of the rows of a `(k, N)` array from its sort (`order`, sorted values
    `s`): average ranks of ties, Blom's offset 3/8, the normal quantile; `(k, N)`."""
    from scipy import special

    total = s.shape[1]
    idx = np.arange(total)
    new_group = np.ones(s.shape, bool)
    new_group[:, 1:] = s[:, 1:] != s[:, :-1]  # tied neighbours share the average of their ranks
    if new_group.all():  # no ties: the ranks are the sort positions
        twice = np.broadcast_to(2 * idx, s.shape)
    else:
        last_of_group = np.ones(s.shape, bool)
        last_of_group[:, :-1] = new_group[:, 1:]
        first = np.maximum.accumulate(np.where(new_group, idx, 0), axis=1)
        last = np.minimum.accumulate(np.where(last_of_group, idx, total - 1)[:, ::-1], axis=1)
        twice = first + last[:, ::-1]
    # the average rank is (first + last)/2 + 1, a half-integer: the normal quantiles of all
    # 2N - 1 possible ranks are one small table (the same values as evaluating each draw's)
    table = special.ndtri((np.arange(2 * total - 1) / 2.0 + 1.0 - 0.375) / (total + 0.25))
    z = np.empty(s.shape)
    np.put_along_axis(z, order, table[twice], axis=1)
    return z


def _z_scale_and_folded(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank-normalize `x` `(chains, draws, k)` per coordinate (average ranks over all chains
    and draws), and likewise its folded values `|x - median|`; both `(chains, draws, k)`."""
    c, n, k = x.shape
    total = c * n
    rows = np.ascontiguousarray(x.reshape(total, k).T)  # (k, N): sort along contiguous rows
    order = np.argsort(rows, axis=1)
    s = np.take_along_axis(rows, order, axis=1)
    if np.isfinite(s).all():
        mid = total // 2
        median = s[:, mid] if total % 2 else (s[:, mid - 1] + s[:, mid]) / 2.0
    else:
        median = np.median(rows, axis=1)
    # in sorted order the folded values are two monotone runs: a stable sort (timsort)
    # merges them in linear time
    folded = np.abs(s - median[:, None])
    order_f = np.argsort(folded, axis=1, kind="stable")
    s_f = np.take_along_axis(folded, order_f, axis=1)
    order_f = np.take_along_axis(order, order_f, axis=1)
    z = _sorted_to_z(order, s).T.reshape(c, n, k)
    z_folded = _sorted_to_z(order_f, s_f).T.reshape(c, n, k)
    return z, z_folded


def _split_rhat(z: np.ndarray) -> np.ndarray:
    n = z.shape[1]
    between = n * z.mean(axis=1).var(axis=0, ddof=1)
    within = z.var(axis=1, ddof=1).mean(axis=0)
    return np.sqrt((between / within + n - 1) / n)


def _autocovariance(x, axis: int, xp=np, *, power_of_two: bool = True):
    """Biased autocovariances (lags `0 .. n-1`) of `x` along `axis` by FFT, zero-padded to
    `2n` (to the next power of two with `power_of_two`): no wrap-around. `xp` is `numpy` or
    `jax.numpy`: the same code serves the NumPy diagnostics here and the traced JAX adaptation
    of the microcanonical samplers."""
    n = x.shape[axis]
    size = 2 ** math.ceil(math.log2(2 * n)) if power_of_two else 2 * n
    f = xp.fft.rfft(x, size, axis=axis)
    lags = [slice(None)] * x.ndim
    lags[axis] = slice(0, n)
    return xp.fft.irfft(f * xp.conj(f), size, axis=axis)[tuple(lags)] / n


def _geyer_tau(rho, xp=np, *, monotone: bool = False):
    """`τ = -1 + 2 Σ_j Γ_j`, `Γ_j = ρ_2j + ρ_2j+1`, from autocorrelations `rho` (lags along axis
    0, `rho.shape[0] // 2` pairs), truncated at Geyer's initial positive sequence; with
    `monotone=True` the pairs are also made non-increasing (initial monotone sequence). Works on
    NumPy and JAX arrays (`xp`)."""
    m = rho.shape[0] // 2
    pairs = rho[0 : 2 * m : 2] + rho[1 : 2 * m : 2]
    positive = xp.cumprod(pairs > 0, axis=0) > 0
    if monotone:
        pairs = xp.minimum.accumulate(xp.where(positive, pairs, xp.inf), axis=0)
    return -1.0 + 2.0 * xp.sum(xp.where(positive, pairs, 0.0), axis=0)


def _geyer_ess(z: np.ndarray) -> np.ndarray:
    """ESS of `z` `(chains, draws, k)` per coordinate with Geyer's initial monotone sequence,
    all coordinates at once (autocovariances by FFT)."""
    c, n, k = z.shape
    acov = _autocovariance(z - z.mean(axis=1, keepdims=True), axis=1)  # (c, n, k), biased
    mean_var = acov[:, 0].mean(axis=0) * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if c > 1:
        var_plus = var_plus + z.mean(axis=1).var(axis=0, ddof=1)
    rho = 1.0 - (mean_var - acov.mean(axis=0)) / var_plus  # (n, k)
    rho[0] = 1.0
    tau = _geyer_tau(rho[: n - 1], monotone=True)  # (n - 1) // 2 pairs, as ArviZ
    total = c * n
    tau = np.maximum(tau, 1.0 / np.log10(total))
    return total / tau


@_quiet
def fast_ess_rhat(samples) -> tuple[np.ndarray, np.ndarray]:
    """Bulk ESS and rank-normalized split R-hat (max of bulk and folded) per coordinate of
    `samples` `(num_chains, num_draws, *event)`, vectorized over coordinates: the same
    definitions as `ess(samples, "bulk")` / `rhat` above (R-hat equal
    to ArviZ's; the ESS's Geyer truncation differs from ArviZ's loop in its last pair, so it
    agrees to about a percent), at a fraction of ArviZ's per-coordinate cost. The driver's
    health checks use it; `SampleResult.ess` / `.rhat` stay ArviZ's."""
    x = np.asarray(samples, np.float64)
    if x.ndim < 2 or x.shape[1] < 4:
        raise ValueError(f"samples must have shape (num_chains, >= 4 draws, ...), got {x.shape}.")
    shape = x.shape[2:]
    x = x.reshape(x.shape[0], x.shape[1], -1)
    half = x.shape[1] // 2
    split = np.concatenate([x[:, :half], x[:, x.shape[1] - half :]], axis=0)
    z, folded = _z_scale_and_folded(split)
    rhat = np.maximum(_split_rhat(z), _split_rhat(folded))
    ess = _geyer_ess(z)
    constant = np.ptp(x.reshape(-1, x.shape[2]), axis=0) < np.finfo(np.float64).resolution
    ess = np.where(constant, x.shape[0] * x.shape[1], ess)
    rhat = np.where(constant, np.nan, rhat)
    return ess.reshape(shape), rhat.reshape(shape)
