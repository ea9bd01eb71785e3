"""Statistical assertion helpers shared by tests: tolerances from Monte Carlo standard errors."""

import numpy as np


def assert_iid_mean(samples, expected, *, n_sigma=5.0, label="mean"):
    """Check the per-coordinate mean of i.i.d. samples against `expected` within `n_sigma` MCSE."""
    x = np.asarray(samples, dtype=float).reshape(len(samples), -1)
    expected = np.broadcast_to(np.asarray(expected, dtype=float).reshape(-1), x.shape[1:])
    mcse = x.std(0, ddof=1) / np.sqrt(x.shape[0])
    err = np.abs(x.mean(0) - expected)
    bad = err > n_sigma * mcse + 1e-12
    assert not bad.any(), f"{label}: |error| {err[bad]} > {n_sigma} MCSE {mcse[bad]}"


def assert_iid_variance(samples, expected, *, n_sigma=5.0, label="variance"):
    """Check the per-coordinate variance of i.i.d. samples within `n_sigma` MCSE of the estimator."""
    x = np.asarray(samples, dtype=float).reshape(len(samples), -1)
    expected = np.broadcast_to(np.asarray(expected, dtype=float).reshape(-1), x.shape[1:])
    c = x - x.mean(0)
    var = (c**2).mean(0)
    mcse = np.sqrt(np.maximum((c**4).mean(0) - var**2, 0.0) / x.shape[0])
    err = np.abs(var - expected)
    bad = err > n_sigma * mcse + 1e-12
    assert not bad.any(), f"{label}: |error| {err[bad]} > {n_sigma} MCSE {mcse[bad]}"


def assert_iid_probability(hits, expected, *, n_sigma=5.0, label="probability"):
    """Check a Bernoulli frequency against `expected` within `n_sigma` binomial standard errors."""
    hits = np.asarray(hits, dtype=float)
    p = float(expected)
    se = np.sqrt(p * (1 - p) / hits.size)
    assert abs(hits.mean() - p) <= n_sigma * se, f"{label}: {hits.mean()} vs {p} (se {se})"
