"""log Z estimators and importance-weight ESS from log-weights (numerically stable, logsumexp).

A log-weight is `log_w = log_density(x) - log q(x)` for an unnormalized target density
`exp(log_density)` with normalizer `Z` and a normalized proposal `q`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float, Scalar
from ._metrics import as_float, is_concrete


class LogZEstimate(eqx.Module):
    """An estimate of `log Z` with its Monte Carlo standard error.

    **Fields:**

    - `value`: the estimate.
    - `stderr`: its standard error (NaN with a single weight).
    """

    value: Scalar
    stderr: Scalar


class ImportanceESS(eqx.Module):
    """Kish effective sample size of importance weights.

    **Fields:**

    - `ess`: `(Σ w)² / Σ w²`, in `[1, n]`.
    - `normalized`: `ess / n`, in `(0, 1]`.
    """

    ess: Scalar
    normalized: Scalar


def _log_weights(log_w, name: str, *, allow_neg_inf: bool) -> Float[Array, " n"]:
    log_w = jnp.asarray(log_w)
    if log_w.ndim != 1:
        raise ValueError(f"`{name}` must be a 1-D array of log-weights, got shape {log_w.shape}.")
    if log_w.shape[0] < 1:
        raise ValueError(f"`{name}` must contain at least one log-weight, got an empty array.")
    log_w = as_float(log_w)
    if is_concrete(log_w):
        if allow_neg_inf:
            bad = jnp.isnan(log_w) | (log_w == jnp.inf)
            if bool(jnp.any(bad)):
                raise ValueError(f"`{name}` contains NaN or +inf (-inf is allowed: a zero weight).")
            if not bool(jnp.any(jnp.isfinite(log_w))):
                raise ValueError(f"`{name}` has no finite entry: every weight is zero.")
        elif not bool(jnp.all(jnp.isfinite(log_w))):
            raise ValueError(f"`{name}` contains non-finite values (NaN or inf).")
    return log_w


@jax.jit
def _ess(log_w: Array) -> Array:
    return jnp.exp(2.0 * jax.nn.logsumexp(log_w) - jax.nn.logsumexp(2.0 * log_w))


def importance_ess(log_w) -> ImportanceESS:
    """Effective sample size of self-normalized importance weights `w ∝ exp(log_w)`.

    `ESS = (Σ w)² / Σ w² = exp(2 logsumexp(log_w) - logsumexp(2 log_w))`, invariant to a
    constant shift of `log_w`. Equal weights give `ESS = n`; one non-zero weight gives 1.

    **Arguments:**

    - `log_w`: log-weights, shape `(n,)`; `-inf` entries are zero weights.

    **Returns:** an [`ImportanceESS`][] with `ess` (absolute) and `normalized` (`ess / n`).
    """
    log_w = _log_weights(log_w, "log_w", allow_neg_inf=True)
    ess = _ess(log_w)
    return ImportanceESS(ess=ess, normalized=ess / log_w.shape[0])


def log_z_importance(log_w) -> LogZEstimate:
    r"""Importance-sampling estimate `log Ẑ = log mean exp(log_w)` with `x ~ q`.

    `Ẑ` is unbiased for `Z`; `log Ẑ` is consistent and biased low by Jensen (the bias is
    ~`-Var(w)/(2 n Z²)`). The standard error is the delta-method one,
    `se(log Ẑ) = sd(w) / (sqrt(n) mean(w)) = sqrt((n / ESS - 1) / (n - 1))`, computed from
    the ESS so it stays stable for extreme weights (and is itself unreliable when the ESS is
    small).

    **Arguments:**

    - `log_w`: log-weights `log_density(x_i) - log q(x_i)` at `x_i ~ q`, shape `(n,)`;
      `-inf` entries are zero weights.

    **Returns:** a [`LogZEstimate`][].
    """
    log_w = _log_weights(log_w, "log_w", allow_neg_inf=True)
    return _log_mean_exp(log_w)


@jax.jit
def _log_mean_exp(log_w: Array) -> LogZEstimate:
    n = log_w.shape[0]
    value = jax.nn.logsumexp(log_w) - jnp.log(n)
    if n < 2:
        return LogZEstimate(value=value, stderr=jnp.asarray(jnp.nan, value.dtype))
    rel_var = jnp.clip(n / _ess(log_w) - 1.0, 0.0) / (n - 1)
    return LogZEstimate(value=value, stderr=jnp.sqrt(rel_var))


@jax.jit
def _mean_and_se(v: Array) -> LogZEstimate:
    n = v.shape[0]
    value = jnp.mean(v)
    if n < 2:
        return LogZEstimate(value=value, stderr=jnp.asarray(jnp.nan, value.dtype))
    return LogZEstimate(value=value, stderr=jnp.std(v, ddof=1) / jnp.sqrt(n))


def elbo(log_w) -> LogZEstimate:
    """Evidence lower bound `E_q[log_w] <= log Z` from log-weights at proposal samples.

    `ELBO = log Z - KL(q ‖ p)`. Estimated by the sample mean, with standard error
    `sd(log_w) / sqrt(n)`.

    **Arguments:**

    - `log_w`: log-weights `log_density(x_i) - log q(x_i)` at `x_i ~ q`, shape `(n,)`; must
      be finite.

    **Returns:** a [`LogZEstimate`][].
    """
    return _mean_and_se(_log_weights(log_w, "log_w", allow_neg_inf=False))


def eubo(log_w_target_samples) -> LogZEstimate:
    """Evidence upper bound `E_p[log_w] >= log Z` from log-weights at TARGET samples.

    `EUBO = log Z + KL(p ‖ q)`; needs exact (or reference) samples from the target `p`.
    Estimated by the sample mean, with standard error `sd / sqrt(n)`. Together with
    [`elbo`][] it brackets `log Z`.

    **Arguments:**

    - `log_w_target_samples`: `log_density(x_i) - log q(x_i)` at `x_i ~ p`, shape `(n,)`;
      must be finite.

    **Returns:** a [`LogZEstimate`][].
    """
    return _mean_and_se(
        _log_weights(log_w_target_samples, "log_w_target_samples", allow_neg_inf=False)
    )
