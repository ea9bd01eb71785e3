"""Structured SG-MCMC (Alexos, Boyd & Mandt 2022): Langevin dynamics on a "self-averaged"
energy in which, for each chosen group of coordinates, the OTHER groups are replaced by iterates
drawn from the chain's own past.

With the coordinates split into groups `θ = (θ₁, …, θ_M)`, group `i` moves along

`∇ᵢ E_{θ̃ ~ buffer} [log π(θᵢ, θ̃₋ᵢ)]`,

the gradient of the log density averaged over earlier iterates `θ̃` of the other groups. The
stationary law is then (for small steps and a long buffer) the fixed point of coordinate-ascent
variational inference over the factorization `q(θ) = Πᵢ qᵢ(θᵢ)` with NON-parametric factors:
dependencies between groups are cut, and with them the slow directions that strong cross-group
correlations give a plain Langevin chain. On a Gaussian target each `qᵢ` is `N(μᵢ, (Λᵢᵢ)⁻¹)`
(`Λ` the precision): the mean is exact and the group's variance is the CONDITIONAL one, smaller
than the marginal one. It is a structured variational approximation, not the posterior.

The dropout variant replaces the `M` per-group gradients by `num_draws` gradients at points in
which each group is, independently with probability `keep_probability` (`ρ`), its current value
and otherwise a buffered one; group `i` uses the draws that kept it, reweighted by `1/ρ`. Its mean
drift interpolates between the structured one (`ρ → 0`) and plain SGLD (`ρ = 1`).
"""

from __future__ import annotations

import itertools
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..._custom_types import Array, Key
from ...energies._base import AbstractEnergy
from .._base import Info, all_finite, check_int, float_leaf, init_position, select
from ._schedules import AbstractSchedule, ConstantSchedule
from ._sgmcmc import AbstractSGMCMC


class StructuredState(eqx.Module):
    """The state of a structured SG-MCMC chain.

    - `position`; `log_density`, `score`: the minibatch estimates AT `position` (exact at the
      initial point);
    - `drift`: the structured (self-averaged) drift at `position`, the next step's force;
    - `buffer`: the last `buffer_size` iterates (flattened, a ring; slot `t mod buffer_size`
      holds iterate `t`), the earlier iterates the other groups are drawn from;
    - `count`: the step counter (drives the schedule and the ring).
    """

    position: Array
    log_density: Array
    score: Array
    drift: Array
    buffer: Array
    count: Array


def _check_groups(groups) -> tuple[int, ...] | None:
    if groups is None:
        return None
    try:
        labels = tuple(groups)
    except TypeError:
        raise TypeError(
            f"`groups` must be None or a sequence of int group labels, got {groups!r}."
        ) from None
    if not labels or not all(
        isinstance(g, (int, np.integer)) and not isinstance(g, (bool, np.bool_)) for g in labels
    ):
        raise TypeError(f"`groups` must be a non-empty sequence of int labels, got {groups!r}.")
    labels = tuple(int(g) for g in labels)
    used = sorted(set(labels))
    if used != list(range(len(used))):
        raise ValueError(
            f"`groups` must use the labels 0, 1, ..., M-1 (each at least once), got {used}."
        )
    return labels


class StructuredSGLD(AbstractSGMCMC):
    """Structured stochastic-gradient Langevin dynamics (Alexos, Boyd & Mandt 2022, S-SGMCMC),
    with its dropout variant:

    `θᵢ' = θᵢ + h ĝᵢ + √(2h) ξᵢ`, `ĝᵢ = (1/K) Σₖ ∇ᵢ log π̂(θᵢ, θ̃₋ᵢ⁽ᵏ⁾)`,

    where `θ̃⁽ᵏ⁾` are `K = num_draws` iterates drawn uniformly from the last `buffer_size` of the
    chain and `log π̂` a minibatch estimate (`batch_size` data, one minibatch per step shared by
    all the points). The stationary law is the structured (group-factorized) variational
    approximation, NOT the posterior: on a Gaussian target each group is `N(μᵢ, (Λᵢᵢ)⁻¹)` and
    groups are uncorrelated; within a group the posterior's dependence is kept. In exchange the
    chain does not crawl along cross-group correlations. Unadjusted and biased like SGLD, with an
    extra `O(h)` variance from the random buffer draws, and a bias of order (correlation time /
    `buffer_size`) from the buffer holding correlated recent iterates.

    With `keep_probability=ρ` (dropout variant) each of the `K` points keeps every group at its
    current value with probability `ρ` (independently) and otherwise takes the buffered value;
    `ĝ = (1/K) Σₖ rₖ ⊙ ∇ log π̂(zₖ) / ρ`. That costs `K` gradients a step instead of `M·K`.

    Each step evaluates the minibatch estimate at the new position too (the state's
    `log_density` and `score`), so a step costs `1 + M·K` estimates (`1 + K` with dropout);
    [`data_gradient_evaluations`][driftax.samplers.data_gradient_evaluations] counts them.

    **Arguments:**

    - `step_size` (`h`), `batch_size`, `replace`, `schedule`: as for
      [`SGLD`][driftax.samplers.SGLD].
    - `groups`: one int label per coordinate of the (flattened) position, labels `0..M-1`;
      `None` (default) puts every coordinate in its own group (fully factorized).
    - `buffer_size`: how many recent iterates are kept to draw from (default 1000).
    - `num_draws`: `K`, buffered iterates averaged over per step (default 1).
    - `keep_probability`: `None` (default) for the structured sampler, or `ρ ∈ (0, 1]` for the
      dropout variant.

    **Example:**

    ```python
    import jax
    import driftax as dx

    design, y = dx.energies.simulate_linear_regression(jax.random.key(0), 500, 4)
    target = dx.energies.linear_regression(design, y)
    sampler = dx.samplers.StructuredSGLD(step_size=1e-3, batch_size=50, groups=(0, 0, 1, 1))
    result = dx.sample(sampler, target, target.mean, key=jax.random.key(1), num_steps=500,
                       num_warmup=0, num_chains=2, check_health=False)
    ```
    """

    step_size: Array = eqx.field(converter=float_leaf)
    batch_size: int = eqx.field(static=True, default=32)
    replace: bool = eqx.field(static=True, default=False)
    schedule: AbstractSchedule = eqx.field(default_factory=ConstantSchedule)
    groups: tuple[int, ...] | None = eqx.field(static=True, default=None, converter=_check_groups)
    buffer_size: int = eqx.field(static=True, default=1000)
    num_draws: int = eqx.field(static=True, default=1)
    keep_probability: float | None = eqx.field(static=True, default=None)

    uses_momentum: ClassVar[bool] = False

    def __check_init__(self):
        self._check_common()
        check_int(self.buffer_size, "buffer_size", 1)
        check_int(self.num_draws, "num_draws", 1)
        rho = self.keep_probability
        if rho is not None:
            if isinstance(rho, (bool, np.bool_)) or not isinstance(
                rho, (int, float, np.integer, np.floating)
            ):
                raise TypeError(f"`keep_probability` must be None or a float, got {rho!r}.")
            if not 0.0 < float(rho) <= 1.0:
                raise ValueError(f"`keep_probability` must be in (0, 1], got {rho!r}.")

    # ---- groups ---------------------------------------------------------------------------

    def _labels(self, size: int) -> tuple[np.ndarray, int]:
        if self.groups is None:
            return np.arange(size), size
        if len(self.groups) != size:
            raise ValueError(
                f"`groups` has {len(self.groups)} labels but the position has {size} "
                "coordinates (one label per coordinate of the flattened position)."
            )
        labels = np.asarray(self.groups)
        return labels, int(labels.max()) + 1

    def num_groups(self, energy: AbstractEnergy) -> int:
        """`M`, the number of groups on `energy`'s positions."""
        size = int(np.prod(energy.event_shape, dtype=int))
        return self._labels(size)[1]

    def estimates_per_step(self, energy: AbstractEnergy) -> int:
        """Minibatch estimates one step evaluates: `1 + M·K` (`1 + K` with dropout)."""
        m = 1 if self.keep_probability is not None else self.num_groups(energy)
        return 1 + m * self.num_draws

    # ---- the kernel -----------------------------------------------------------------------

    def _evaluate(self, energy, x: Array, buffer: Array, filled: Array, key: Key):
        """The minibatch estimate at `x` and the structured drift at `x`, from `K` draws out of
        the first `filled` buffer slots. One minibatch for all the points."""
        shape, dtype = jnp.shape(x), jnp.result_type(x)
        flat = jnp.reshape(x, (-1,))
        labels_np, m = self._labels(flat.shape[0])
        labels = jnp.asarray(labels_np)
        k_idx, k_mask, k_batch = jax.random.split(key, 3)
        idx = jax.random.randint(k_idx, (self.num_draws,), 0, filled)
        past = buffer[idx]  # (K, d)
        if self.keep_probability is None:
            own = labels[None, :] == jnp.arange(m)[:, None]  # (M, d): group i's coordinates
            points = jnp.where(own[:, None, :], flat[None, None, :], past[None, :, :])
            points = jnp.reshape(points, (m * self.num_draws, -1))
        else:
            rho = self.keep_probability
            keep_groups = jax.random.bernoulli(k_mask, rho, (self.num_draws, m))
            keep = keep_groups[:, labels]  # (K, d)
            points = jnp.where(keep, flat[None, :], past)
        allpoints = jnp.concatenate([flat[None, :], points], axis=0)
        allpoints = jnp.reshape(allpoints, (allpoints.shape[0], *shape))
        vals, scores, _ = jax.vmap(lambda p: self._estimate(energy, p, k_batch))(allpoints)
        scores = jnp.reshape(scores, (scores.shape[0], -1))
        logp, score = vals[0], jnp.reshape(scores[0], shape)
        mixed = scores[1:]
        if self.keep_probability is None:
            per_group = jnp.mean(jnp.reshape(mixed, (m, self.num_draws, -1)), axis=1)  # (M, d)
            drift = jnp.sum(jnp.where(own, per_group, 0.0), axis=0)
        else:
            weights = keep.astype(dtype) / jnp.asarray(self.keep_probability, dtype)
            drift = jnp.mean(weights * mixed, axis=0)
        return logp, score, jnp.reshape(drift, shape).astype(dtype)

    def init(self, energy: AbstractEnergy, x0: Array) -> StructuredState:
        energy = self._check_energy(energy)
        x0, logp, score = init_position(energy, x0)
        self._labels(int(np.prod(jnp.shape(x0), dtype=int)))  # eager check of `groups`
        flat = jnp.reshape(x0, (1, -1))
        buffer = jnp.broadcast_to(flat, (self.buffer_size, flat.shape[1]))
        # with only x0 in the buffer the mixed points are x0: the drift is the exact score
        return StructuredState(
            position=x0,
            log_density=logp,
            score=score,
            drift=score,
            buffer=buffer,
            count=jnp.zeros((), jnp.int32),
        )

    def step(self, energy: AbstractEnergy, state: StructuredState, *, key: Key):
        energy, x, y, k_eval = self._langevin_move(energy, state, state.drift, key)
        dtype = jnp.result_type(x)
        # the buffer holds iterates 0..t (t = count); the new iterate goes in after the draws
        filled = jnp.minimum(state.count + 1, self.buffer_size)
        logp, score, drift = self._evaluate(energy, y, state.buffer, filled, k_eval)
        ok = all_finite(y, logp, score, drift)
        # a non-finite proposal is rejected: the chain repeats x (which the buffer records too)
        pos = select(ok, y, x)
        slot = jnp.mod(state.count + 1, self.buffer_size)
        buffer = state.buffer.at[slot].set(jnp.reshape(pos, (-1,)))
        new = StructuredState(y, logp, score, drift, buffer, state.count + 1)
        kept = StructuredState(
            x, state.log_density, state.score, state.drift, buffer, state.count + 1
        )
        info = Info(
            acceptance_rate=ok.astype(dtype),
            is_divergent=~ok,
            energy_error=jnp.zeros((), dtype),
            num_grad_evals=jnp.asarray(self.estimates_per_step(energy), jnp.int32),
        )
        return select(ok, new, kept), info


def structured_stationary_covariance(sampler: StructuredSGLD, precision) -> np.ndarray:
    """The stationary covariance of `sampler` (constant schedule, exact gradients) on a
    Gaussian target with this `precision` matrix `Λ`, in the long-buffer limit (the buffered
    iterates independent of the current one and distributed as the chain's stationary law).

    Every step is then affine in the position with random coefficients (the dropout masks) and
    independent random inputs (the buffered iterates), so the covariance solves the linear
    fixed point `C = E[F C Fᵀ] + Σₖ E[Bₖ C Bₖᵀ] + 2h I`, solved exactly (float64, the masks
    enumerated). As `h → 0` the structured sampler's covariance tends to the block-diagonal
    matrix of the `(Λᵢᵢ)⁻¹` and the dropout variant's to the `C` with `A C + C Aᵀ = 2I`,
    `A = blockdiag(Λ) + ρ (Λ − blockdiag(Λ))`. A finite buffer adds a bias of order the
    chain's correlation time over `buffer_size`. The mean is the target's, exactly.

    **Arguments:** `sampler` (a [`StructuredSGLD`][driftax.samplers.StructuredSGLD]; its
    `step_size`, `groups`, `num_draws` and `keep_probability` are used), `precision` (`(d, d)`,
    symmetric positive definite).
    """
    if not isinstance(sampler, StructuredSGLD):
        raise TypeError(f"`sampler` must be a StructuredSGLD, got {type(sampler).__name__}.")
    lam = np.asarray(precision, np.float64)
    if lam.ndim != 2 or lam.shape[0] != lam.shape[1]:
        raise ValueError(f"`precision` must be a square matrix, got shape {lam.shape}.")
    d = lam.shape[0]
    labels, m = sampler._labels(d)
    h, k = float(np.asarray(sampler.step_size)), sampler.num_draws
    eye = np.eye(d)
    block = np.where(labels[:, None] == labels[None, :], lam, 0.0)
    cases = []  # (probability, F, [B_k])
    rho = sampler.keep_probability
    if rho is None:
        cases.append((1.0, eye - h * block, [-(h / k) * (lam - block)] * k))
    else:
        if m * k > 12:
            raise ValueError(
                f"the dropout prediction enumerates 2^(M·K) masks; M·K = {m * k} is over 12."
            )
        rho = float(rho)
        for masks in itertools.product(itertools.product((0, 1), repeat=m), repeat=k):
            prob, f, bs = 1.0, eye.copy(), []
            for mask in masks:
                prob *= float(np.prod([rho if v else 1.0 - rho for v in mask]))
                r = np.diag(np.asarray(mask, np.float64)[labels])
                f = f - (h / (k * rho)) * r @ lam @ r
                bs.append(-(h / (k * rho)) * r @ lam @ (eye - r))
            cases.append((prob, f, bs))
    op = np.zeros((d * d, d * d))
    for prob, f, bs in cases:
        op += prob * (np.kron(f, f) + sum(np.kron(b, b) for b in bs))
    cov = np.linalg.solve(np.eye(d * d) - op, (2.0 * h * eye).reshape(-1)).reshape(d, d)
    return 0.5 * (cov + cov.T)
