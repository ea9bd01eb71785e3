"""Harder MCMC benchmark targets (issue 13): a probabilistic Rosenbrock with analytic moments, a
two-parameter-logistic item-response model on synthetic data, and a sparse (regularized
horseshoe) logistic regression on the breast-cancer data.

The two Bayesian posteriors carry reference moments from long NUTS runs
(`benchmarks/make_hard_references.py`, stored in `driftax/energies/data/`), with their Monte
Carlo standard errors, in the same layout as [`logistic_regression`][].
"""

from __future__ import annotations

import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_finite, check_int, check_positive, check_sample_shape
from .._custom_types import Array, Key, Point, Scalar, Shape
from ._base import (
    AbstractKnownMoments,
    AbstractKnownNormalizer,
    AbstractSampleable,
    check_event,
)
from ._bayes import _data_file, _load_npz, _ReferenceMoments, breast_cancer_data
from ._gaussian import normal_log_density

_HARD_SCRIPT = "benchmarks/make_hard_references.py"
_IRT_DATA = "irt_synthetic.npz"
_IRT_REFERENCE = "irt_reference.npz"
_HORSESHOE_REFERENCE = "horseshoe_reference.npz"

# --------------------------------------------------------------------------------------------------
# Rosenbrock
# --------------------------------------------------------------------------------------------------


def _normal_raw_moments(a: float) -> dict[int, float]:
    """E[x^k] of x ~ N(a, 1), k = 1, 2, 4, 6, 8."""
    a2 = a * a
    return {
        1: a,
        2: a2 + 1.0,
        4: a2 * a2 + 6.0 * a2 + 3.0,
        6: a2**3 + 15.0 * a2 * a2 + 45.0 * a2 + 15.0,
        8: a2**4 + 28.0 * a2**3 + 210.0 * a2 * a2 + 420.0 * a2 + 105.0,
    }


class Rosenbrock(AbstractSampleable, AbstractKnownNormalizer, AbstractKnownMoments):
    r"""The probabilistic Rosenbrock ("banana") target of the MCLMC/MAMS benchmarks: `dim/2`
    independent pairs `(x, y)` (coordinates `[x₁ … x_{d/2}, y₁ … y_{d/2}]`) with

    `x ~ N(a, 1)`, `y | x ~ N(x², q)`, i.e.
    `log p(x, y) = −½(x − a)² − (y − x²)²/(2q) − log(2π√q)` per pair.

    Normalized (`log_normalizer == 0`), with exact samples and analytic moments: `E x = a`,
    `Var x = 1`, `E y = a² + 1`, `Var y = q + 4a² + 2`. `second_moment_variance` (`Var x²`, `Var
    y²`, for the bias² of x²) is analytic too. With `q = 1/(2b)` and `x ~ N(a, ½)` this is
    `exp(−[(a−x)² + b(y−x²)²])`; the default `q = 0.1` is the benchmark variant. Build it with
    [`rosenbrock`][].
    """

    a: float = eqx.field(static=True)
    q: float = eqx.field(static=True)
    event_shape: Shape = eqx.field(static=True)

    def log_density(self, x: Point) -> Scalar:
        z = check_event(x, self.event_shape)
        half = self.event_shape[0] // 2
        u, v = z[:half], z[half:]
        return normal_log_density(u - self.a) + normal_log_density(
            v - u**2, scale=math.sqrt(self.q)
        )

    def sample(self, key: Key, shape: Shape | int = ()) -> Array:
        shape = check_sample_shape(shape)
        half = self.event_shape[0] // 2
        eps = jax.random.normal(key, (*shape, 2, half))
        u = self.a + eps[..., 0, :]
        v = u**2 + math.sqrt(self.q) * eps[..., 1, :]
        return jnp.concatenate([u, v], axis=-1)

    @property
    def log_normalizer(self) -> Scalar:
        return jnp.zeros(())

    def _pairwise(self, fx: float, fy: float) -> Array:
        half = self.event_shape[0] // 2
        return jnp.asarray(np.repeat([fx, fy], half), jnp.result_type(float))

    @property
    def mean(self) -> Array:
        return self._pairwise(self.a, self.a**2 + 1.0)

    @property
    def variance(self) -> Array:
        return self._pairwise(1.0, self.q + 4.0 * self.a**2 + 2.0)

    @property
    def second_moment_variance(self) -> Array:
        """`Var[x²]` per coordinate (analytic), for the bias² of the second moments."""
        m, q = _normal_raw_moments(self.a), self.q
        var_x2 = m[4] - m[2] ** 2
        ey2 = m[4] + q
        ey4 = m[8] + 6.0 * q * m[4] + 3.0 * q * q
        return self._pairwise(var_x2, ey4 - ey2**2)


def rosenbrock(dim: int = 2, *, a: float = 1.0, q: float = 0.1) -> Rosenbrock:
    """The probabilistic Rosenbrock target ([`Rosenbrock`][]): `dim/2` independent pairs with
    `x ~ N(a, 1)`, `y | x ~ N(x², q)`.

    **Arguments:**

    - `dim`: an even int ≥ 2 (default 2; the MAMS paper uses 36).
    - `a`: the mean of `x` (default 1).
    - `q`: the conditional variance of `y` (default 0.1; smaller is a thinner banana).
    """
    dim = check_int(dim, "dim", minimum=2, even=True)
    return Rosenbrock(
        a=float(check_finite(a, "a")), q=float(check_positive(q, "q")), event_shape=(dim,)
    )


def _load_reference(name: str, expected: dict[str, float]):
    """The stored reference if it exists and was made for the same settings, else `(None, ())`."""
    if not _data_file(name).is_file():
        return None, ()
    raw = _load_npz(name)
    info = {k: float(v) for k, v in raw.items() if not np.ndim(v)}
    if any(not math.isclose(info.get(k, math.nan), v) for k, v in expected.items()):
        return None, ()
    dtype = jnp.result_type(float)
    ref = {k: jnp.asarray(v, dtype) for k, v in raw.items() if np.ndim(v)}
    return ref, tuple(info.items())


# --------------------------------------------------------------------------------------------------
# Two-parameter-logistic item response
# --------------------------------------------------------------------------------------------------

IRT_ABILITY_SCALE = 1.0
"""Prior sd of the abilities θ."""
IRT_LOG_DISCRIMINATION_SCALE = 0.5
"""Prior sd of the log-discriminations log α."""
IRT_DIFFICULTY_SCALE = 2.0
"""Prior sd of the difficulties β (prior mean 0)."""


def simulate_item_response(
    seed: int = 0, num_students: int = 200, num_items: int = 20
) -> dict[str, np.ndarray]:
    """Simulate 2PL responses from the prior of [`ItemResponse`][] (NumPy `default_rng(seed)`):
    abilities `θ ~ N(0, 1)`, log-discriminations `N(0, 0.5²)`, difficulties `N(0, 1)` (a
    narrower spread than the prior's, so that most items are informative), and
    `y_{si} ~ Bernoulli(σ(α_i (θ_s − β_i)))`.

    **Returns:** a dict with `responses` (`(num_students, num_items)`, int8), `ability`,
    `log_discrimination`, `difficulty` (the simulated truth).
    """
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal(num_students)
    log_alpha = IRT_LOG_DISCRIMINATION_SCALE * rng.standard_normal(num_items)
    beta = rng.standard_normal(num_items)
    logits = np.exp(log_alpha)[None, :] * (theta[:, None] - beta[None, :])
    y = (rng.uniform(size=logits.shape) < 1.0 / (1.0 + np.exp(-logits))).astype(np.int8)
    return {"responses": y, "ability": theta, "log_discrimination": log_alpha, "difficulty": beta}


class _HardPosterior(_ReferenceMoments):
    """The posteriors of this module: references made by `_HARD_SCRIPT`."""

    _reference_script: ClassVar[str] = _HARD_SCRIPT


class ItemResponse(_HardPosterior):
    r"""The posterior of a two-parameter-logistic (2PL) item-response model with fixed
    hyperparameters. The point is `[θ₁ … θ_S, log α₁ … log α_I, β₁ … β_I]` (`S + 2I` dims):

    `y_{si} ~ Bernoulli(σ(α_i (θ_s − β_i)))`, `θ_s ~ N(0, 1)`, `log α_i ~ N(0, 0.5²)`,
    `β_i ~ N(0, 2²)`.

    The prior is normalized, so log Z is the log marginal likelihood. Build it with
    [`item_response`][]. **Ground truth** (default size only): reference `mean` / `variance` with
    MCSEs from a long NUTS run, as for [`LogisticRegression`][].
    """

    responses: Array
    num_students: int = eqx.field(static=True)
    num_items: int = eqx.field(static=True)

    def log_density(self, x: Point) -> Scalar:
        z = check_event(x, self.event_shape)
        s, i = self.num_students, self.num_items
        theta, log_alpha, beta = z[:s], z[s : s + i], z[s + i :]
        logits = jnp.exp(log_alpha)[None, :] * (theta[:, None] - beta[None, :])
        log_lik = jnp.sum(self.responses * logits - jax.nn.softplus(logits))
        return (
            log_lik
            + normal_log_density(theta, scale=IRT_ABILITY_SCALE)
            + normal_log_density(log_alpha, scale=IRT_LOG_DISCRIMINATION_SCALE)
            + normal_log_density(beta, scale=IRT_DIFFICULTY_SCALE)
        )


def item_response(
    num_students: int = 200, num_items: int = 20, *, seed: int = 0, with_reference: bool = True
) -> ItemResponse:
    """The 2PL item-response posterior ([`ItemResponse`][]) on synthetic responses.

    The default, 200 students × 20 items (240 dimensions), reads the shipped responses
    (`irt_synthetic.npz`, made by `simulate_item_response(0, 200, 20)`) and carries reference
    moments; other sizes or seeds simulate their responses and have no reference.

    **Arguments:**

    - `num_students`, `num_items`: ints ≥ 1.
    - `seed`: the seed of the simulated responses.
    - `with_reference`: load the stored reference moments (default).
    """
    num_students = check_int(num_students, "num_students")
    num_items = check_int(num_items, "num_items")
    seed = check_int(seed, "seed", minimum=0)
    default = (num_students, num_items, seed) == (200, 20, 0)
    if default and _data_file(_IRT_DATA).is_file():
        y = _load_npz(_IRT_DATA)["responses"]
    else:
        y = simulate_item_response(seed, num_students, num_items)["responses"]
    reference, info = None, ()
    if with_reference and default:
        reference, info = _load_reference(
            _IRT_REFERENCE, {"num_students": num_students, "num_items": num_items}
        )
    return ItemResponse(
        responses=jnp.asarray(y, jnp.result_type(float)),
        num_students=num_students,
        num_items=num_items,
        event_shape=(num_students + 2 * num_items,),
        _reference=reference,
        _reference_info=info,
    )


# --------------------------------------------------------------------------------------------------
# Sparse logistic regression: regularized horseshoe, non-centred
# --------------------------------------------------------------------------------------------------


def _log_half_cauchy_of_log(u: Array, scale: float) -> Array:
    """log density of `u = log s` for `s ~ C⁺(0, scale)` (Jacobian included)."""
    v = u - math.log(scale)
    return math.log(2.0 / math.pi) + v - jax.nn.softplus(2.0 * v)


class HorseshoeLogisticRegression(_HardPosterior):
    r"""Sparse Bayesian logistic regression on the standardized breast-cancer data with a
    non-centred regularized horseshoe prior (Piironen & Vehtari 2017, slab scale fixed).

    Point: `[b, z₁ … z_p, log λ₁ … log λ_p, log τ]` (`2p + 2 = 62` dims for `p = 30`) with

    `w_j = τ λ̃_j z_j`, `λ̃_j² = c² λ_j² / (c² + τ² λ_j²)`, `z_j ~ N(0, 1)`, `λ_j ~ C⁺(0, 1)`,
    `τ ~ C⁺(0, τ₀)`, intercept `b ~ N(0, 2²)`, `yᵢ ~ Bernoulli(σ(b + xᵢ·w))`;

    the half-Cauchy scales are sampled on the log scale (Jacobians included). The slab `c` keeps
    the weights' tails Gaussian (the data are nearly separable, where a plain horseshoe has
    moments that barely exist). Build it with [`horseshoe_logistic_regression`][]. **Ground
    truth** (default `c = 2`, `τ₀ = 0.1`): reference `mean` / `variance` with MCSEs from a long
    NUTS run.
    """

    design: Array
    labels: Array
    slab_scale: float = eqx.field(static=True)
    global_scale: float = eqx.field(static=True)

    def weights(self, x: Point) -> Array:
        """The regression weights `w` (without the intercept) of a point."""
        z = check_event(x, self.event_shape)
        p = self.design.shape[1]
        zs, log_lam, log_tau = z[1 : p + 1], z[p + 1 : 2 * p + 1], z[-1]
        c2 = self.slab_scale**2
        # λ̃² τ² = c² τ²λ² / (c² + τ²λ²), computed on the log scale
        log_tl2 = 2.0 * (log_tau + log_lam)
        log_eff2 = math.log(c2) + log_tl2 - jnp.logaddexp(math.log(c2), log_tl2)
        return jnp.exp(0.5 * log_eff2) * zs

    def log_density(self, x: Point) -> Scalar:
        z = check_event(x, self.event_shape)
        p = self.design.shape[1]
        b, zs, log_lam, log_tau = z[0], z[1 : p + 1], z[p + 1 : 2 * p + 1], z[-1]
        logits = b + self.design @ self.weights(z)
        log_lik = jnp.sum(self.labels * logits - jax.nn.softplus(logits))
        log_prior = (
            normal_log_density(b, scale=2.0)
            + normal_log_density(zs)
            + jnp.sum(_log_half_cauchy_of_log(log_lam, 1.0))
            + _log_half_cauchy_of_log(log_tau, self.global_scale)
        )
        return log_lik + log_prior


def horseshoe_logistic_regression(
    *, slab_scale: float = 2.0, global_scale: float = 0.1, with_reference: bool = True
) -> HorseshoeLogisticRegression:
    """Sparse logistic regression on the breast-cancer data with a non-centred regularized
    horseshoe prior ([`HorseshoeLogisticRegression`][]): 62 dimensions.

    **Arguments:**

    - `slab_scale`: the slab width `c` (default 2).
    - `global_scale`: the scale `τ₀` of the global shrinkage's half-Cauchy prior (default 0.1).
    - `with_reference`: load the stored reference moments (default values only).
    """
    c = float(check_positive(slab_scale, "slab_scale"))
    tau0 = float(check_positive(global_scale, "global_scale"))
    x, y = breast_cancer_data(standardize=True)
    dtype = jnp.result_type(float)
    reference, info = None, ()
    if with_reference:
        reference, info = _load_reference(
            _HORSESHOE_REFERENCE, {"slab_scale": c, "global_scale": tau0}
        )
    return HorseshoeLogisticRegression(
        design=jnp.asarray(x, dtype),
        labels=jnp.asarray(y, dtype),
        slab_scale=c,
        global_scale=tau0,
        event_shape=(2 * x.shape[1] + 2,),
        _reference=reference,
        _reference_info=info,
    )
