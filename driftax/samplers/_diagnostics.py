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


def ess(samples, method: str = "bulk") -> np.ndarray:
    """Effective sample size per coordinate of `samples` `(num_chains, num_draws, *event)`;
    `method` is `"bulk"` or `"tail"` (Vehtari et al. 2021), summed over chains."""
    ds, shape = _dataset(samples)
    return _values(_arviz().ess(ds, method=method), shape)


def rhat(samples) -> np.ndarray:
    """Rank-normalized split R-hat per coordinate (needs ≥ 1 chain; ≥ 2 recommended)."""
    ds, shape = _dataset(samples)
    return _values(_arviz().rhat(ds), shape)


def mcse(samples, method: str = "mean") -> np.ndarray:
    """Monte Carlo standard error per coordinate of the mean (`"mean"`) or sd (`"sd"`)."""
    ds, shape = _dataset(samples)
    return _values(_arviz().mcse(ds, method=method), shape)
