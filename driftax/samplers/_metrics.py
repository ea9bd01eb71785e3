"""Metrics (mass matrices) for the kinetic samplers and proposal scales of the position-only ones.

A metric fixes the kinetic energy `K(p) = ½ pᵀ M⁻¹ p`. The inverse mass matrix `M⁻¹` is the
preconditioner: set it to (an estimate of) the target's covariance. Everything acts on ONE point of
any event shape; the dense metric flattens internally. Every method works in the dtype of its
argument (the position's dtype decides): a float64 mass matrix applied to a float32 momentum
gives float32.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Key, Scalar


class AbstractMetric(eqx.Module):
    """A Gaussian momentum distribution `N(0, M)` and the kinetic energy `½ pᵀ M⁻¹ p`."""

    @abc.abstractmethod
    def kinetic_energy(self, momentum: Array) -> Scalar:
        """`½ pᵀ M⁻¹ p`."""

    @abc.abstractmethod
    def velocity(self, momentum: Array) -> Array:
        """`M⁻¹ p`, the time derivative of the position."""

    @abc.abstractmethod
    def velocity_to_momentum(self, velocity: Array) -> Array:
        """`M v`, the inverse of `velocity`."""

    @abc.abstractmethod
    def momentum_noise(self, xi: Array) -> Array:
        """Map standard normal `xi` to `M^{1/2} xi` (covariance `M`)."""

    @abc.abstractmethod
    def position_noise(self, xi: Array) -> Array:
        """Map standard normal `xi` to `M^{-1/2} xi` (covariance `M⁻¹`)."""

    def sample_momentum(self, key: Key, position: Array) -> Array:
        """A draw from `N(0, M)` shaped (and typed) like `position`."""
        xi = jax.random.normal(key, jnp.shape(position), jnp.result_type(position))
        return self.momentum_noise(xi)


class IdentityMetric(AbstractMetric):
    """`M = I`."""

    def kinetic_energy(self, momentum: Array) -> Scalar:
        return 0.5 * jnp.sum(momentum**2)

    def velocity(self, momentum: Array) -> Array:
        return momentum

    def velocity_to_momentum(self, velocity: Array) -> Array:
        return velocity

    def momentum_noise(self, xi: Array) -> Array:
        return xi

    def position_noise(self, xi: Array) -> Array:
        return xi


class DiagonalMetric(AbstractMetric):
    """A diagonal `M⁻¹ = diag(inverse_mass)`, `inverse_mass` shaped like one point.

    Set `inverse_mass` to the target's marginal variances to precondition.
    """

    inverse_mass: Array

    def __init__(self, inverse_mass):
        if not isinstance(inverse_mass, jax.core.Tracer):
            arr = np.asarray(inverse_mass, dtype=float)
            if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
                raise ValueError("`inverse_mass` must be finite and positive.")
        self.inverse_mass = jnp.asarray(inverse_mass, dtype=jnp.result_type(inverse_mass, float))

    def _m(self, like: Array) -> Array:
        return self.inverse_mass.astype(jnp.result_type(like))

    def kinetic_energy(self, momentum: Array) -> Scalar:
        return 0.5 * jnp.sum(self._m(momentum) * momentum**2)

    def velocity(self, momentum: Array) -> Array:
        return self._m(momentum) * momentum

    def velocity_to_momentum(self, velocity: Array) -> Array:
        return velocity / self._m(velocity)

    def momentum_noise(self, xi: Array) -> Array:
        return xi * jax.lax.rsqrt(self._m(xi))

    def position_noise(self, xi: Array) -> Array:
        return xi * jnp.sqrt(self._m(xi))


class DenseMetric(AbstractMetric):
    """A dense `M⁻¹ = inverse_mass` (a `(d, d)` SPD matrix, `d` the number of coordinates).

    Its lower Cholesky factor `L` (`L Lᵀ = M⁻¹`) is computed once, at construction.
    """

    inverse_mass: Array
    cholesky: Array

    def __init__(self, inverse_mass):
        if not isinstance(inverse_mass, jax.core.Tracer):
            arr = np.asarray(inverse_mass, dtype=float)
            if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
                raise ValueError(f"`inverse_mass` must be a square matrix, got shape {arr.shape}.")
            if not np.all(np.isfinite(arr)):
                raise ValueError("`inverse_mass` must be finite.")
            if np.any(np.linalg.eigvalsh(0.5 * (arr + arr.T)) <= 0):
                raise ValueError("`inverse_mass` must be symmetric positive definite.")
        m = jnp.asarray(inverse_mass, dtype=jnp.result_type(inverse_mass, float))
        self.inverse_mass = m
        self.cholesky = jnp.linalg.cholesky(m)

    def _apply(self, fn, v: Array) -> Array:
        return fn(v.reshape(-1)).reshape(jnp.shape(v))

    def _m(self, like: Array) -> Array:
        return self.inverse_mass.astype(jnp.result_type(like))

    def _chol(self, like: Array) -> Array:
        return self.cholesky.astype(jnp.result_type(like))

    def kinetic_energy(self, momentum: Array) -> Scalar:
        p = momentum.reshape(-1)
        return 0.5 * p @ (self._m(p) @ p)

    def velocity(self, momentum: Array) -> Array:
        return self._apply(lambda p: self._m(p) @ p, momentum)

    def velocity_to_momentum(self, velocity: Array) -> Array:
        return self._apply(lambda v: jax.scipy.linalg.cho_solve((self._chol(v), True), v), velocity)

    def momentum_noise(self, xi: Array) -> Array:
        # M^{1/2} = L^{-T}: (L^{-T})(L^{-T})ᵀ = (L Lᵀ)^{-1} = M.
        return self._apply(
            lambda z: jax.scipy.linalg.solve_triangular(self._chol(z), z, lower=True, trans="T"),
            xi,
        )

    def position_noise(self, xi: Array) -> Array:
        return self._apply(lambda z: self._chol(z) @ z, xi)


class LowRankMetric(AbstractMetric):
    """A diagonal plus low-rank inverse mass `M⁻¹ = S (I + U (Λ - I) Uᵀ) S`.

    `S = diag(√diagonal)` is a diagonal scale and `U` (`(d, k)`, orthonormal columns) and
    `Λ = diag(eigenvalues)` (`k` positive numbers) the leading eigenpairs of the covariance in
    the coordinates scaled by `S⁻¹` (nutpie's low-rank + diagonal mass matrix). An eigenvalue of
    1 is no correction, so `eigenvalues = 1` is exactly `DiagonalMetric(diagonal)`. Every
    operation costs `O(dk)`; the dense matrix is never formed (see `dense_inverse_mass` for
    checks).

    **Arguments:**

    - `diagonal`: the diagonal scale `S²` (positive, shaped like one point).
    - `eigenvectors`: `(d, k)` with orthonormal columns, `d` the number of coordinates.
    - `eigenvalues`: `(k,)`, positive.
    """

    diagonal: Array
    eigenvectors: Array
    eigenvalues: Array

    def __init__(self, diagonal, eigenvectors, eigenvalues):
        concrete = not any(
            isinstance(a, jax.core.Tracer) for a in (diagonal, eigenvectors, eigenvalues)
        )
        if concrete:
            dg = np.asarray(diagonal, dtype=float)
            u = np.asarray(eigenvectors, dtype=float)
            lam = np.asarray(eigenvalues, dtype=float)
            if not np.all(np.isfinite(dg)) or np.any(dg <= 0):
                raise ValueError("`diagonal` must be finite and positive.")
            if u.ndim != 2 or u.shape[0] != dg.size or u.shape[1] > dg.size:
                raise ValueError(
                    f"`eigenvectors` must have shape (d, k) with d = {dg.size} (the size of "
                    f"`diagonal`) and k <= d, got {u.shape}."
                )
            if lam.shape != (u.shape[1],):
                raise ValueError(
                    f"`eigenvalues` must have shape ({u.shape[1]},) (one per eigenvector), got "
                    f"{lam.shape}."
                )
            if not np.all(np.isfinite(lam)) or np.any(lam <= 0):
                raise ValueError("`eigenvalues` must be finite and positive.")
            if not np.all(np.isfinite(u)):
                raise ValueError("`eigenvectors` must be finite.")
            tol = 1e-4 if jnp.result_type(eigenvectors) == jnp.float64 else 1e-3
            if u.shape[1] and np.max(np.abs(u.T @ u - np.eye(u.shape[1]))) > tol:
                raise ValueError("`eigenvectors` must have orthonormal columns.")
        dtype = jnp.result_type(diagonal, eigenvectors, eigenvalues, float)
        self.diagonal = jnp.asarray(diagonal, dtype=dtype)
        self.eigenvectors = jnp.asarray(eigenvectors, dtype=dtype)
        self.eigenvalues = jnp.asarray(eigenvalues, dtype=dtype)

    @property
    def rank(self) -> int:
        """The number `k` of eigenpairs."""
        return self.eigenvectors.shape[-1]

    def _low_rank(self, v: Array, power) -> Array:
        """`(I + U (Λ^power - I) Uᵀ) v` for a flat `v`."""
        dtype = jnp.result_type(v)
        u = self.eigenvectors.astype(dtype)
        lam = self.eigenvalues.astype(dtype)
        return v + u @ ((lam**power - 1.0) * (u.T @ v))

    def _scale(self, like: Array) -> Array:
        return jnp.sqrt(self.diagonal.astype(jnp.result_type(like))).reshape(-1)

    def _apply(self, v: Array, power, scale_power) -> Array:
        """`S^s (I + U (Λ^power - I) Uᵀ) S^s v` on a flattened point."""
        s = self._scale(v) ** scale_power
        flat = v.reshape(-1)
        return (s * self._low_rank(s * flat, power)).reshape(jnp.shape(v))

    def kinetic_energy(self, momentum: Array) -> Scalar:
        return 0.5 * jnp.sum(momentum * self.velocity(momentum))

    def velocity(self, momentum: Array) -> Array:
        return self._apply(momentum, 1.0, 1.0)

    def velocity_to_momentum(self, velocity: Array) -> Array:
        return self._apply(velocity, -1.0, -1.0)

    def momentum_noise(self, xi: Array) -> Array:
        # M = S⁻¹ (I + U (Λ⁻¹ - I) Uᵀ) S⁻¹ = A Aᵀ with A = S⁻¹ (I + U (Λ^{-1/2} - I) Uᵀ)
        s = self._scale(xi)
        return (self._low_rank(xi.reshape(-1), -0.5) / s).reshape(jnp.shape(xi))

    def position_noise(self, xi: Array) -> Array:
        # M⁻¹ = B Bᵀ with B = S (I + U (Λ^{1/2} - I) Uᵀ)
        s = self._scale(xi)
        return (s * self._low_rank(xi.reshape(-1), 0.5)).reshape(jnp.shape(xi))

    def dense_inverse_mass(self) -> Array:
        """The `(d, d)` matrix `M⁻¹` this metric represents (O(d²); for checks and display)."""
        s = jnp.sqrt(self.diagonal.reshape(-1))
        u, lam = self.eigenvectors, self.eigenvalues
        inner = jnp.eye(s.size, dtype=s.dtype) + (u * (lam - 1.0)) @ u.T
        return s[:, None] * inner * s[None, :]
