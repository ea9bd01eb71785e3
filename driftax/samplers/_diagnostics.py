"""Convergence diagnostics through ArviZ (rank-normalized split R-hat, bulk/tail ESS, MCSE)."""

from __future__ import annotations

import numpy as np


def _arviz():
    try:
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
