r"""MCMC bias² against ground-truth moments (Robnik et al., MCHMC / MCLMC papers).

For a function `f` applied coordinate-wise, the standardized squared error of a sample
average is

    b²(f)_i = (Ê[f(x_i)] - E[f(x_i)])² / Var[f(x_i)],

reported as its average and its maximum over coordinates `i`. With `f(x) = x²` this is the
"bias² of the second moment" used to count gradient evaluations until `b² < 0.01` (roughly
100 effective samples, since `b² ≈ 1/ESS` for an unbiased sampler). `E[x²] = σ² + μ²` and, by
default, `Var[x²] = 2σ⁴ + 4μ²σ²` (exact for Gaussian marginals; `2σ⁴` when `μ = 0`, as in the
papers); pass `second_moment_variance` for other targets (`E[x⁴] - E[x²]²` from a reference).
The blackjax benchmark code (`err`, `grads_to_low_error`, `find_crossing`) uses the same
definition; its crossing index is one step earlier than ours (see
[`gradients_to_threshold`][]).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Scalar
from ._metrics import as_float, as_samples, check_finite_array, is_concrete


class BiasSquared(eqx.Module):
    """Standardized squared errors of the first and second moments.

    Each field has the leading shape of the input moments (scalar for one sample set,
    `(num_steps,)` for a running estimate).

    **Fields:**

    - `x_avg`, `x_max`: average / max over coordinates of `(Ê[x] - E[x])² / Var[x]`.
    - `x2_avg`, `x2_max`: average / max over coordinates of `(Ê[x²] - E[x²])² / Var[x²]`.
    """

    x_avg: Array
    x_max: Array
    x2_avg: Array
    x2_max: Array


def _truth(mean, variance, second_moment_variance, d: int, dtype):
    out = []
    for name, v in (("mean", mean), ("variance", variance)):
        v = as_float(jnp.asarray(v)).astype(dtype)
        if v.ndim > 1 or (v.ndim == 1 and v.shape[0] != d):
            raise ValueError(f"`{name}` must be a scalar or have shape ({d},), got {v.shape}.")
        check_finite_array(v, name)
        out.append(jnp.broadcast_to(v, (d,)))
    mu, var = out
    if is_concrete(var) and not bool(jnp.all(var > 0)):
        raise ValueError("`variance` must be positive.")
    if second_moment_variance is None:
        var2 = 2.0 * var**2 + 4.0 * mu**2 * var
    else:
        var2 = as_float(jnp.asarray(second_moment_variance)).astype(dtype)
        if var2.ndim > 1 or (var2.ndim == 1 and var2.shape[0] != d):
            raise ValueError(
                f"`second_moment_variance` must be a scalar or have shape ({d},), got {var2.shape}."
            )
        check_finite_array(var2, "second_moment_variance")
        var2 = jnp.broadcast_to(var2, (d,))
        if is_concrete(var2) and not bool(jnp.all(var2 > 0)):
            raise ValueError("`second_moment_variance` must be positive.")
    return mu, var, var + mu**2, var2


@jax.jit
def _bias_from_moments(m1, m2, mu, var, second, var2) -> BiasSquared:
    b1 = (m1 - mu) ** 2 / var
    b2 = (m2 - second) ** 2 / var2
    return BiasSquared(
        x_avg=jnp.mean(b1, axis=-1),
        x_max=jnp.max(b1, axis=-1),
        x2_avg=jnp.mean(b2, axis=-1),
        x2_max=jnp.max(b2, axis=-1),
    )


def bias_squared(samples_or_moments, mean, variance, *, second_moment_variance=None) -> BiasSquared:
    """Bias² of the first and second moments against ground truth (avg and max over coords).

    **Arguments:**

    - `samples_or_moments`: either samples of shape `(n, d)` (pool chains first), or a tuple
      `(first_moment, second_moment)` of estimated `Ê[x]`, `Ê[x²]` with shape `(..., d)`
      (e.g. running moments of shape `(num_steps, d)`).
    - `mean`, `variance`: ground-truth `E[x]` and `Var[x]`, scalars or shape `(d,)`.
    - `second_moment_variance`: `Var[x²]`; default `2σ⁴ + 4μ²σ²` (Gaussian marginals).

    **Returns:** a [`BiasSquared`][] (fields of the leading shape of the moments).
    """
    if isinstance(samples_or_moments, (tuple, list)):
        if len(samples_or_moments) != 2:
            raise ValueError(
                "`samples_or_moments` as a tuple must be (first_moment, second_moment), got "
                f"{len(samples_or_moments)} entries."
            )
        m1 = as_float(jnp.asarray(samples_or_moments[0]))
        m2 = as_float(jnp.asarray(samples_or_moments[1]))
        if m1.shape != m2.shape or m1.ndim < 1 or m1.shape[-1] < 1:
            raise ValueError(
                "`samples_or_moments` moments must share a shape (..., d) with d >= 1, got "
                f"{m1.shape} and {m2.shape}."
            )
        check_finite_array(m1, "samples_or_moments")
        check_finite_array(m2, "samples_or_moments")
    else:
        x = as_samples(samples_or_moments, "samples_or_moments")
        m1 = jnp.mean(x, axis=0)
        m2 = jnp.mean(x**2, axis=0)
    dtype = jnp.result_type(m1.dtype, m2.dtype)
    truth = _truth(mean, variance, second_moment_variance, m1.shape[-1], dtype)
    return _bias_from_moments(m1.astype(dtype), m2.astype(dtype), *truth)


def running_moments(chain) -> tuple[Array, Array]:
    """Running averages `Ê_t[x]`, `Ê_t[x²]` after `t = 1, ..., num_steps` steps.

    Accumulated with a pairwise (associative) scan, so the rounding error grows like
    `log(num_steps)` instead of `num_steps`. A chain of shape `(num_chains, num_steps, d)` is
    pooled: the estimate after `t` steps averages the `num_chains * t` draws so far.

    **Arguments:**

    - `chain`: shape `(num_steps, d)` or `(num_chains, num_steps, d)`.

    **Returns:** `(first, second)`, each of shape `(num_steps, d)`.
    """
    chain = as_float(jnp.asarray(chain))
    if chain.ndim not in (2, 3) or chain.shape[-2] < 1 or chain.shape[-1] < 1:
        raise ValueError(
            "`chain` must have shape (num_steps, d) or (num_chains, num_steps, d) with "
            f"num_steps, d >= 1, got {chain.shape}."
        )
    check_finite_array(chain, "chain")
    return _running_moments(chain)


@jax.jit
def _running_moments(chain: Array) -> tuple[Array, Array]:
    if chain.ndim == 3:
        s1 = jnp.mean(chain, axis=0)
        s2 = jnp.mean(chain**2, axis=0)
    else:
        s1, s2 = chain, chain**2
    t = jnp.arange(1, chain.shape[-2] + 1, dtype=chain.dtype)[:, None]
    c1 = jax.lax.associative_scan(jnp.add, s1, axis=0)
    c2 = jax.lax.associative_scan(jnp.add, s2, axis=0)
    return c1 / t, c2 / t


def running_bias_squared(chain, mean, variance, *, second_moment_variance=None) -> BiasSquared:
    """Bias² after every step of a chain (for finding when it drops below a threshold).

    [`bias_squared`][] of the [`running_moments`][] of `chain`.

    **Arguments:**

    - `chain`: shape `(num_steps, d)` or `(num_chains, num_steps, d)` (chains pooled).
    - `mean`, `variance`, `second_moment_variance`: as in [`bias_squared`][].

    **Returns:** a [`BiasSquared`][] whose fields have shape `(num_steps,)`.

    **Example:**

    ```python
    import jax
    import driftax as dx

    chain = jax.random.normal(jax.random.key(0), (2000, 4))  # "exact sampler" on N(0, I)
    b2 = dx.energies.running_bias_squared(chain, 0.0, 1.0)
    print(dx.energies.gradients_to_threshold(b2.x2_avg, grads_per_step=1))
    ```
    """
    return bias_squared(
        running_moments(chain), mean, variance, second_moment_variance=second_moment_variance
    )


def gradients_to_threshold(running_bias, grads_per_step=1, threshold: float = 0.01) -> Scalar:
    """Gradient evaluations after which a running bias² stays below `threshold` for good.

    With `running_bias[t - 1]` the bias² after `t` steps, this returns
    `grads_per_step * t*`, where `t*` is the smallest `t` such that
    `running_bias[s - 1] < threshold` for every `s >= t` (so 1 when it is below from the start),
    and `inf` when the last entry is not below `threshold`. (blackjax's `find_crossing`
    returns `t* - 1`.) jit-friendly.

    **Arguments:**

    - `running_bias`: shape `(num_steps,)`, e.g. `running_bias_squared(...).x2_max`.
    - `grads_per_step`: gradient evaluations per step (per chain, or in total when chains
      are pooled and you count all of them).
    - `threshold`: the bias² level, 0.01 by default.

    **Returns:** a scalar float array (`inf` if the threshold is never reached for good).
    """
    b = as_float(jnp.asarray(running_bias))
    if b.ndim != 1 or b.shape[0] < 1:
        raise ValueError(f"`running_bias` must have shape (num_steps,), got {b.shape}.")
    if is_concrete(threshold) and not float(threshold) > 0:
        raise ValueError(f"`threshold` must be positive, got {threshold!r}.")
    if is_concrete(grads_per_step) and not float(grads_per_step) > 0:
        raise ValueError(f"`grads_per_step` must be positive, got {grads_per_step!r}.")
    return _crossing(b, jnp.asarray(grads_per_step, b.dtype), jnp.asarray(threshold, b.dtype))


@jax.jit
def _crossing(b: Array, grads_per_step: Array, threshold: Array) -> Scalar:
    above = ~(b < threshold)  # NaN counts as above
    idx = jnp.arange(1, b.shape[0] + 1)
    last_above = jnp.max(jnp.where(above, idx, 0))  # 1-based step count, 0 if never above
    steps = (last_above + 1).astype(b.dtype)
    return jnp.where(above[-1], jnp.inf, steps * grads_per_step)
