"""Energies over a data set: a prior plus a sum of per-datum log likelihoods, with unbiased
minibatch estimates of the log density and its score (what stochastic-gradient MCMC consumes).

`log_density(x) = log_prior(x) + Σᵢ log_likelihood(x, datumᵢ)` is exact. A minibatch `S` of `n`
of the `N` data (drawn with or without replacement, keyed) gives the unbiased estimate
`log_prior(x) + (N/n) Σ_{i∈S} log_likelihood(x, datumᵢ)` of the value and, by linearity, of the
score. With a control variate around a reference point `x̂` (SVRG / SGLD-CV), the estimate is
`log_prior(x) + L(x̂) + (N/n) Σ_{i∈S} [ℓᵢ(x) − ℓᵢ(x̂)]` (and likewise for the score), still
unbiased, with a variance that vanishes as `x → x̂`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_int, check_positive
from .._custom_types import Array, Key, Point, PyTree, Scalar, Shape
from ._base import (
    AbstractEnergy,
    AbstractKnownMoments,
    AbstractSampleable,
    check_event,
    check_finite,
)
from ._gaussian import normal_log_density


class ControlVariate(eqx.Module):
    """The reference point `x̂` of a control-variate estimate, with the full-data log
    likelihood `L(x̂) = Σᵢ ℓᵢ(x̂)` and its gradient (made once, with `N` data gradients, by
    [`AbstractDataEnergy.with_control_variate`][])."""

    point: Array
    log_likelihood: Array
    score: Array


class MinibatchEstimate(eqx.Module):
    """An unbiased minibatch estimate of `log_density(x)` (`value`) and of its score (`score`).

    `score_variance` (when asked for) is an unbiased estimate of the elementwise variance of
    `score` as an estimator, from the spread of the per-datum gradients in the batch (with the
    finite-population factor `1 − n/N` for sampling without replacement); `None` otherwise.
    """

    value: Array
    score: Array
    score_variance: Array | None = None


def check_data(data, name: str = "data") -> int:
    """Check that `data` is a non-empty pytree of arrays with one common leading axis (the data
    axis, of length ≥ 1); return its length `N`. A `ValueError` naming `name` otherwise."""
    leaves = jax.tree_util.tree_leaves(data)
    if not leaves:
        raise ValueError(f"`{name}` must be a non-empty pytree of arrays, got {data!r}.")
    sizes = []
    for leaf in leaves:
        shape = np.shape(leaf)
        if len(shape) < 1:
            raise ValueError(
                f"every leaf of `{name}` must have a leading data axis; got a leaf of shape {shape}."
            )
        sizes.append(int(shape[0]))
    if len(set(sizes)) != 1:
        raise ValueError(
            f"the leaves of `{name}` must have the same leading dimension (the number of data), "
            f"got leading dimensions {sizes}."
        )
    if sizes[0] < 1:
        raise ValueError(f"`{name}` must hold at least one datum, got 0.")
    return sizes[0]


def check_batch_size(batch_size, num_data: int, name: str = "batch_size") -> int:
    """A minibatch size: an int in `[1, num_data]`, else a `ValueError` naming `name`."""
    n = check_int(batch_size, name, 1)
    if n > num_data:
        raise ValueError(f"`{name}` ({n}) must not exceed the number of data ({num_data}).")
    return n


class AbstractDataEnergy(AbstractEnergy):
    """An energy over a data set: `log_density(x) = log_prior(x) + Σᵢ log_likelihood(x, datumᵢ)`
    (exact), with unbiased keyed minibatch estimates of the value and score
    ([`minibatch_estimate`][driftax.energies.AbstractDataEnergy.minibatch_estimate]) and an
    optional control variate around a reference point.

    Subclasses set `event_shape` and `control_variate` (a field, default `None`) and implement
    `log_prior`, `log_likelihood` (ONE datum: a pytree slice of `data` without the data axis)
    and the `data` property (a pytree of arrays with a common leading axis of length `N`).
    They may override `log_density` with a vectorized form of the same sum.
    """

    @property
    def cv(self) -> ControlVariate | None:
        """The control variate of the minibatch estimates (the `control_variate` field of a
        subclass), or `None`."""
        return getattr(self, "control_variate", None)

    @abc.abstractmethod
    def log_prior(self, x: Point) -> Scalar:
        """The log prior density at ONE point `x`."""

    @abc.abstractmethod
    def log_likelihood(self, x: Point, datum: PyTree) -> Scalar:
        """The log likelihood of ONE datum (a slice of `data` without the data axis) at `x`."""

    @property
    @abc.abstractmethod
    def data(self) -> PyTree:
        """The data: a pytree of arrays with a common leading axis of length `num_data`."""

    @property
    def num_data(self) -> int:
        """`N`, the number of data."""
        return int(jax.tree_util.tree_leaves(self.data)[0].shape[0])

    def _log_likelihoods(self, x: Point, data: PyTree) -> Array:
        return jax.vmap(lambda d: self.log_likelihood(x, d))(data)

    def log_density(self, x: Point) -> Scalar:
        x = check_event(x, self.event_shape)
        return self.log_prior(x) + jnp.sum(self._log_likelihoods(x, self.data))

    def data_grads_per_estimate(self, batch_size: int) -> int:
        """Per-datum gradients one minibatch estimate evaluates: `batch_size`, twice that with
        a control variate (the batch is evaluated at `x` and at the reference point)."""
        return batch_size * (1 if self.cv is None else 2)

    def minibatch_indices(self, key: Key, batch_size: int, *, replace: bool = False) -> Array:
        """`batch_size` data indices in `[0, N)`, uniformly with or without replacement."""
        n = check_batch_size(batch_size, self.num_data)
        if replace:
            return jax.random.randint(key, (n,), 0, self.num_data)
        if n == self.num_data:
            return jnp.arange(n)
        return jax.random.choice(key, self.num_data, (n,), replace=False)

    def minibatch_estimate(
        self,
        x: Point,
        *,
        key: Key,
        batch_size: int,
        replace: bool = False,
        with_variance: bool = False,
    ) -> MinibatchEstimate:
        """An unbiased estimate of `log_density(x)` and its score from a random minibatch.

        **Arguments:**

        - `x`: ONE point (shape `event_shape`).
        - `key`: a JAX PRNG key (it picks the minibatch).
        - `batch_size`: the minibatch size `n`, an int in `[1, N]`.
        - `replace`: draw the indices with replacement (default: without).
        - `with_variance`: also estimate the elementwise variance of the score estimate.

        With a control variate ([`with_control_variate`][driftax.energies.AbstractDataEnergy.with_control_variate])
        the per-datum terms are differences to the reference point. Costs
        [`data_grads_per_estimate`][driftax.energies.AbstractDataEnergy.data_grads_per_estimate]
        per-datum gradients.

        **Returns:** a [`MinibatchEstimate`][].
        """
        x = check_event(x, self.event_shape)
        idx = self.minibatch_indices(key, batch_size, replace=replace)
        n, big_n = int(idx.shape[0]), self.num_data
        batch = jax.tree.map(lambda a: jnp.take(a, idx, axis=0), self.data)
        dtype = jnp.result_type(x)

        def terms(point):
            return jax.vmap(jax.value_and_grad(self.log_likelihood), in_axes=(None, 0))(
                point, batch
            )

        vals, grads = terms(x)
        cv = self.cv
        if cv is not None:
            ref_vals, ref_grads = terms(cv.point.astype(dtype))
            vals, grads = vals - ref_vals, grads - ref_grads
        scale = jnp.asarray(big_n / n, dtype)
        prior_val, prior_score = jax.value_and_grad(self.log_prior)(x)
        value = prior_val + scale * jnp.sum(vals)
        score = prior_score + scale * jnp.sum(grads, axis=0)
        if cv is not None:
            value = value + cv.log_likelihood.astype(dtype)
            score = score + cv.score.astype(dtype)
        variance = None
        if with_variance:
            if n > 1:
                spread = jnp.var(grads, axis=0, ddof=1)
            else:
                spread = jnp.zeros_like(x)
            fpc = 1.0 if replace else 1.0 - n / big_n
            variance = jnp.asarray(big_n**2 / n * fpc, dtype) * spread
        return MinibatchEstimate(
            value=value.astype(dtype), score=score.astype(dtype), score_variance=variance
        )

    def minibatch_value_and_score(
        self, x: Point, *, key: Key, batch_size: int, replace: bool = False
    ) -> tuple[Scalar, Point]:
        """`(value, score)` of [`minibatch_estimate`][driftax.energies.AbstractDataEnergy.minibatch_estimate]."""
        est = self.minibatch_estimate(x, key=key, batch_size=batch_size, replace=replace)
        return est.value, est.score

    def with_control_variate(self, point) -> AbstractDataEnergy:
        """A copy of this energy whose minibatch estimates use a control variate around
        `point` (SVRG / SGLD-CV; typically a posterior mode). Evaluates the full-data log
        likelihood and its gradient at `point` once (`N` data gradients). `log_density` is
        unchanged."""
        point = check_event(point, self.event_shape, "point")
        check_finite(point, "point")

        def full(p):
            return jnp.sum(self._log_likelihoods(p, self.data))

        value, score = jax.value_and_grad(full)(point)
        cv = ControlVariate(point=point, log_likelihood=value, score=score)
        return eqx.tree_at(lambda e: e.control_variate, self, cv, is_leaf=lambda v: v is None)

    def without_control_variate(self) -> AbstractDataEnergy:
        """A copy of this energy with plain minibatch estimates."""
        return eqx.tree_at(lambda e: e.control_variate, self, None, is_leaf=lambda v: v is None)


class DataEnergy(AbstractDataEnergy):
    """A data energy from two functions and a data set; build it with [`data_energy`][]."""

    likelihood_fn: Callable = eqx.field(static=True)
    prior_fn: Callable = eqx.field(static=True)
    dataset: PyTree
    event_shape: Shape = eqx.field(static=True)
    control_variate: ControlVariate | None = None

    def log_prior(self, x: Point) -> Scalar:
        return self.prior_fn(x)

    def log_likelihood(self, x: Point, datum: PyTree) -> Scalar:
        return self.likelihood_fn(x, datum)

    @property
    def data(self) -> PyTree:
        return self.dataset


def data_energy(
    log_likelihood: Callable, data: PyTree, log_prior: Callable, event_shape
) -> DataEnergy:
    """A [`DataEnergy`][]: `log_density(x) = log_prior(x) + Σᵢ log_likelihood(x, datumᵢ)`.

    **Arguments:**

    - `log_likelihood`: `(x, datum) -> scalar`, the log likelihood of ONE datum (a slice of
      `data` without the leading axis: an array, or a pytree of arrays).
    - `data`: an array or a pytree of arrays with a common leading axis (the `N` data).
    - `log_prior`: `x -> scalar`.
    - `event_shape`: the shape of ONE point `x`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    xs = jax.random.normal(jax.random.key(0), (500,)) + 1.0
    energy = dx.energies.data_energy(
        lambda mu, d: -0.5 * (d - mu[0]) ** 2,  # N(mu, 1) likelihood
        xs,
        lambda mu: -0.5 * jnp.sum(mu**2) / 100.0,
        (1,),
    )
    est = energy.minibatch_estimate(jnp.zeros(1), key=jax.random.key(1), batch_size=50)
    ```
    """
    if not callable(log_likelihood):
        raise TypeError(f"`log_likelihood` must be callable, got {log_likelihood!r}.")
    if not callable(log_prior):
        raise TypeError(f"`log_prior` must be callable, got {log_prior!r}.")
    data = jax.tree.map(jnp.asarray, data)
    check_data(data)
    try:
        event_shape = tuple(int(s) for s in event_shape)
    except TypeError as e:
        raise TypeError(f"`event_shape` must be a tuple of ints, got {event_shape!r}.") from e
    return DataEnergy(
        likelihood_fn=log_likelihood, prior_fn=log_prior, dataset=data, event_shape=event_shape
    )


# ---------------------------------------------------------------------------------------------
# Bayesian linear regression: a data energy with an exact Gaussian posterior
# ---------------------------------------------------------------------------------------------


class LinearRegression(AbstractDataEnergy, AbstractKnownMoments, AbstractSampleable):
    r"""Bayesian linear regression with a known noise scale: `yᵢ ~ N(φᵢᵀ w, σ²)`,
    `w ~ N(0, τ² I)`. The posterior is Gaussian with precision `A = ΦᵀΦ/σ² + I/τ²` and mean
    `A⁻¹ Φᵀy/σ²` (exact: `mean`, `variance`, `posterior_covariance`, `sample`). Build it with
    [`linear_regression`][]; the data are `(design, targets)`.
    """

    design: Array
    targets: Array
    noise_scale: float = eqx.field(static=True)
    prior_scale: float = eqx.field(static=True)
    event_shape: Shape = eqx.field(static=True)
    control_variate: ControlVariate | None = None

    def log_prior(self, x: Point) -> Scalar:
        return normal_log_density(x, scale=self.prior_scale)

    def log_likelihood(self, x: Point, datum: PyTree) -> Scalar:
        phi, y = datum
        return normal_log_density(y - phi @ x, scale=self.noise_scale)

    def log_density(self, x: Point) -> Scalar:
        w = check_event(x, self.event_shape)
        resid = self.targets - self.design @ w
        return normal_log_density(resid, scale=self.noise_scale) + self.log_prior(w)

    @property
    def data(self) -> PyTree:
        return (self.design, self.targets)

    @property
    def posterior_precision(self) -> Array:
        """`A = ΦᵀΦ/σ² + I/τ²`."""
        d = self.design.shape[1]
        gram = self.design.T @ self.design / self.noise_scale**2
        return gram + jnp.eye(d, dtype=gram.dtype) / self.prior_scale**2

    @property
    def posterior_covariance(self) -> Array:
        """`A⁻¹`."""
        return jnp.linalg.inv(self.posterior_precision)

    @property
    def mean(self) -> Array:
        return self.posterior_covariance @ (self.design.T @ self.targets) / self.noise_scale**2

    @property
    def variance(self) -> Array:
        return jnp.diag(self.posterior_covariance)

    def sample(self, key: Key, shape: Shape | int = ()) -> Array:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        chol = jnp.linalg.cholesky(self.posterior_covariance)
        z = jax.random.normal(key, (*shape, *self.event_shape), self.design.dtype)
        return self.mean + z @ chol.T


def simulate_linear_regression(
    key: Key, num_data: int, dim: int, *, noise_scale: float = 1.0, prior_scale: float = 1.0
) -> tuple[Array, Array]:
    """Synthetic regression data: `design` `(num_data, dim)` with standard normal entries,
    weights drawn from the prior `N(0, prior_scale²)`, `targets = design @ w + noise_scale·ε`.
    **Returns:** `(design, targets)`."""
    num_data, dim = check_int(num_data, "num_data", 1), check_int(dim, "dim", 1)
    check_positive(noise_scale, "noise_scale")
    check_positive(prior_scale, "prior_scale")
    k1, k2, k3 = jax.random.split(key, 3)
    design = jax.random.normal(k1, (num_data, dim))
    w = prior_scale * jax.random.normal(k2, (dim,))
    targets = design @ w + noise_scale * jax.random.normal(k3, (num_data,))
    return design, targets


def linear_regression(
    design, targets, *, noise_scale: float = 1.0, prior_scale: float = 1.0
) -> LinearRegression:
    """Bayesian linear regression ([`LinearRegression`][]) on `design` `(N, d)` and `targets`
    `(N,)`, with noise scale `σ` and prior scale `τ`; its posterior is exactly Gaussian.

    **Example:**

    ```python
    import jax
    import driftax as dx

    design, targets = dx.energies.simulate_linear_regression(jax.random.key(0), 200, 3)
    target = dx.energies.linear_regression(design, targets)
    target.mean, target.posterior_covariance  # the exact posterior
    ```
    """
    design, targets = jnp.asarray(design), jnp.asarray(targets)
    if design.ndim != 2:
        raise ValueError(f"`design` must be a 2-D array (N, d), got shape {design.shape}.")
    if targets.ndim != 1:
        raise ValueError(f"`targets` must be a 1-D array (N,), got shape {targets.shape}.")
    check_data((design, targets), "design and targets")
    check_positive(noise_scale, "noise_scale")
    check_positive(prior_scale, "prior_scale")
    dtype = jnp.result_type(float)
    if not jnp.issubdtype(design.dtype, jnp.floating):
        design = design.astype(dtype)
    return LinearRegression(
        design=design,
        targets=targets.astype(design.dtype),
        noise_scale=float(noise_scale),
        prior_scale=float(prior_scale),
        event_shape=(int(design.shape[1]),),
    )
