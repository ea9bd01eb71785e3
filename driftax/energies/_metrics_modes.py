"""Mode coverage of samples against a mixture (or a set of mode centres)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Scalar
from ._metrics import as_float, as_samples, is_concrete
from ._mixture import GaussianMixture

_RULES = ("nearest", "mixture", "responsibility")


class ModeCoverage(eqx.Module):
    """How many samples fall in each mode, and which modes are hit.

    **Fields:**

    - `counts`: samples assigned to each mode, shape `(K,)` (fractional for the
      `"responsibility"` rule).
    - `weights`: estimated mode weights `counts / Σ counts` (among assigned samples), `(K,)`.
    - `covered`: `counts >= min_count`, boolean `(K,)`.
    - `num_covered`: number of covered modes.
    - `fraction_covered`: `num_covered / K`.
    - `unassigned_fraction`: fraction of samples farther than `max_distance` from every mode
      centre (0 without `max_distance`).
    - `weight_tv`: total variation `½ Σ |weights - true weights|` when a mixture was given,
      else `None`.
    """

    counts: Array
    weights: Array
    covered: Array
    num_covered: Array
    fraction_covered: Scalar
    unassigned_fraction: Scalar
    weight_tv: Scalar | None


def mode_coverage(
    samples,
    modes,
    *,
    assignment: str | None = None,
    min_count: float = 1,
    max_distance=None,
) -> ModeCoverage:
    """Count the samples in each mode of a mixture and report which modes are covered.

    Assignment rules:

    - `"nearest"`: each sample goes to the nearest mode centre (Euclidean); the default when
      `modes` is an array of centres.
    - `"mixture"`: each sample goes to its most probable component (`GaussianMixture.assign`,
      maximum responsibility); the default when `modes` is a [`GaussianMixture`][].
    - `"responsibility"`: soft counts, the sum of the responsibilities `p(k | x)` (mixture only).

    With `max_distance`, samples farther than that from EVERY mode centre count for no mode
    (they are reported in `unassigned_fraction`), so far-off junk does not "cover" a mode.
    A mode is covered when its count is at least `min_count`. jit-friendly.

    **Arguments:**

    - `samples`: shape `(n, d)`.
    - `modes`: a [`GaussianMixture`][] or an array of mode centres of shape `(K, d)`.
    - `assignment`: `"nearest"`, `"mixture"` or `"responsibility"` (default by `modes`).
    - `min_count`: minimum count for a mode to be covered (positive).
    - `max_distance`: optional positive radius, see above.

    **Returns:** a [`ModeCoverage`][].
    """
    x = as_samples(samples, "samples")
    mixture = modes if isinstance(modes, GaussianMixture) else None
    if mixture is not None:
        centres = mixture.means
    else:
        centres = as_float(jnp.asarray(modes))
        if centres.ndim != 2 or centres.shape[0] < 1:
            raise ValueError(
                "`modes` must be a GaussianMixture or an array of mode centres of shape (K, d), "
                f"got shape {tuple(centres.shape)}."
            )
    if centres.shape[1] != x.shape[1]:
        raise ValueError(
            f"`samples` have dimension {x.shape[1]} but `modes` has dimension {centres.shape[1]}."
        )
    if assignment is None:
        assignment = "mixture" if mixture is not None else "nearest"
    if assignment not in _RULES:
        raise ValueError(f"`assignment` must be one of {_RULES}, got {assignment!r}.")
    if assignment != "nearest" and mixture is None:
        raise ValueError(
            f"`assignment={assignment!r}` needs `modes` to be a GaussianMixture; pass "
            "assignment='nearest' for an array of mode centres."
        )
    if is_concrete(min_count) and not float(min_count) > 0:
        raise ValueError(f"`min_count` must be positive, got {min_count!r}.")
    if max_distance is not None and is_concrete(max_distance):
        if not (float(max_distance) > 0 and jnp.isfinite(max_distance)):
            raise ValueError(f"`max_distance` must be finite and positive, got {max_distance!r}.")

    dtype = jnp.result_type(x.dtype, centres.dtype)
    max_d = None if max_distance is None else jnp.asarray(max_distance, dtype)
    return _coverage(
        x.astype(dtype),
        centres.astype(dtype),
        mixture,
        max_d,
        jnp.asarray(min_count, dtype),
        assignment,
    )


@eqx.filter_jit
def _coverage(x, centres, mixture, max_distance, min_count, assignment) -> ModeCoverage:
    dtype = x.dtype
    k = centres.shape[0]
    sq = jax.vmap(lambda xi: jnp.sum((xi - centres) ** 2, axis=-1))(x)  # (n, K)
    if assignment == "nearest":
        member = jax.nn.one_hot(jnp.argmin(sq, axis=-1), k, dtype=dtype)
    elif assignment == "mixture":
        member = jax.nn.one_hot(jax.vmap(mixture.assign)(x), k, dtype=dtype)
    else:
        member = jax.vmap(mixture.responsibilities)(x).astype(dtype)
    if max_distance is None:
        keep = jnp.ones(x.shape[0], dtype)
    else:
        keep = (jnp.min(sq, axis=-1) <= max_distance**2).astype(dtype)
    counts = jnp.sum(member * keep[:, None], axis=0)
    total = jnp.sum(counts)
    weights = counts / jnp.where(total > 0, total, 1.0)
    covered = counts >= min_count
    num_covered = jnp.sum(covered)
    weight_tv = None
    if mixture is not None:
        weight_tv = 0.5 * jnp.sum(jnp.abs(weights - mixture.weights.astype(dtype)))
    return ModeCoverage(
        counts=counts,
        weights=weights,
        covered=covered,
        num_covered=num_covered,
        fraction_covered=num_covered / k,
        unassigned_fraction=1.0 - jnp.mean(keep),
        weight_tv=weight_tv,
    )
