"""Coarse-to-fine conditional sampling of multiscale fields (Guth, Lempereur, Bruna & Mallat
2023, "conditionally strongly log-concave" models), with the EXACT energy of the field.

An orthonormal Haar wavelet transform splits a periodic field (1-D of length `2^k`, or 2-D
`2^k × 2^k`) into a coarse approximation and detail bands, one per level. In the packed layout
used here the transform returns an array of the field's shape: after one level the coarse
approximation fills the first half (1-D) or the top-left quadrant (2-D) and the details the rest;
further levels transform the coarse part again. A "block" is one scale: block 0 is the coarsest
approximation, block `j ≥ 1` the details of level `levels − j + 1`, so blocks run coarse to fine.

[`WaveletConditionalEnergy`][driftax.samplers.WaveletConditionalEnergy] is the energy of one
block given all the other coefficients; for the finest block it is the conditional energy of
the fine scale given the coarse field, which for φ⁴ is strongly log-concave even where the
joint is not. [`CoarseToFineMALA`][driftax.samplers.CoarseToFineMALA] sweeps the blocks coarse
to fine with one windowed MALA step each: every step leaves the target invariant (Metropolis
within Gibbs in an orthonormal basis), so it samples the exact field distribution.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Key, Scalar, Shape
from .._training import Minibatches, check_count, train
from ..energies._base import AbstractEnergy
from ._base import (
    AbstractSampler,
    Info,
    MCMCState,
    check_hyper,
    float_leaf,
    init_position,
    safe_energy_error,
    value_and_score_at,
)
from ._mh import metropolis_hastings
from ._random import draws

_SQRT2 = math.sqrt(2.0)


def _max_levels(shape: tuple[int, ...]) -> int:
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[0] != shape[1]):
        raise ValueError(
            f"the Haar transform needs a 1-D field or a square 2-D field, got shape {shape}."
        )
    n = shape[0]
    levels = 0
    while n % 2 == 0 and n >= 2:
        n //= 2
        levels += 1
    return levels


def check_levels(levels, shape: tuple[int, ...]) -> int:
    """`levels` as an int in `[1, max]`, `max` the number of times the side halves evenly."""
    top = _max_levels(tuple(shape))
    if isinstance(levels, (bool, np.bool_)) or not isinstance(levels, (int, np.integer)):
        raise TypeError(f"`levels` must be an int, got {levels!r}.")
    if not 1 <= levels <= top:
        raise ValueError(
            f"`levels` must be in [1, {top}] for a field of shape {tuple(shape)}, got {levels}."
        )
    return int(levels)


def _analysis_1level(x: Array) -> Array:
    if x.ndim == 1:
        a, b = x[0::2], x[1::2]
        return jnp.concatenate([(a + b) / _SQRT2, (a - b) / _SQRT2])
    a, b, c, d = x[0::2, 0::2], x[0::2, 1::2], x[1::2, 0::2], x[1::2, 1::2]
    ll, lh = (a + b + c + d) / 2, (a - b + c - d) / 2
    hl, hh = (a + b - c - d) / 2, (a - b - c + d) / 2
    return jnp.block([[ll, lh], [hl, hh]])


def _synthesis_1level(w: Array) -> Array:
    if w.ndim == 1:
        h = w.shape[0] // 2
        s, t = w[:h], w[h:]
        return jnp.stack([(s + t) / _SQRT2, (s - t) / _SQRT2], axis=-1).reshape(-1)
    h = w.shape[0] // 2
    ll, lh, hl, hh = w[:h, :h], w[:h, h:], w[h:, :h], w[h:, h:]
    a, b = (ll + lh + hl + hh) / 2, (ll - lh + hl - hh) / 2
    c, d = (ll + lh - hl - hh) / 2, (ll - lh - hl + hh) / 2
    top = jnp.stack([a, b], axis=-1).reshape(h, 2 * h)
    bottom = jnp.stack([c, d], axis=-1).reshape(h, 2 * h)
    return jnp.stack([top, bottom], axis=1).reshape(2 * h, 2 * h)


def _corner(n: int, ndim: int) -> tuple[slice, ...]:
    return (slice(0, n),) * ndim


def haar_analysis(field, levels: int = 1) -> Array:
    """The orthonormal 2-D (or 1-D) Haar transform of `field` over `levels` levels, in the packed
    layout (same shape; the coarse approximation in the leading corner of side `n / 2^levels`).
    Linear and orthogonal: [`haar_synthesis`][driftax.samplers.haar_synthesis] inverts it."""
    x = jnp.asarray(field)
    levels = check_levels(levels, x.shape)
    n = x.shape[0]
    for _ in range(levels):
        idx = _corner(n, x.ndim)
        x = x.at[idx].set(_analysis_1level(x[idx]))
        n //= 2
    return x


def haar_synthesis(coefficients, levels: int = 1) -> Array:
    """The inverse (= transpose) of [`haar_analysis`][driftax.samplers.haar_analysis]."""
    w = jnp.asarray(coefficients)
    levels = check_levels(levels, w.shape)
    n = w.shape[0] >> (levels - 1)
    for _ in range(levels):
        idx = _corner(n, w.ndim)
        w = w.at[idx].set(_synthesis_1level(w[idx]))
        n *= 2
    return w


def haar_blocks(shape, levels: int = 1) -> list[np.ndarray]:
    """Boolean masks (in the packed layout) of the scales, coarse to fine: the coarsest
    approximation, then the detail bands of levels `levels, …, 1`. They partition the field."""
    shape = tuple(shape)
    levels = check_levels(levels, shape)
    ndim, n = len(shape), shape[0]
    masks = []
    coarse = np.zeros(shape, bool)
    coarse[_corner(n >> levels, ndim)] = True
    masks.append(coarse)
    for level in range(levels, 0, -1):
        inner = np.zeros(shape, bool)
        inner[_corner(n >> (level - 1), ndim)] = True
        inner[_corner(n >> level, ndim)] = False
        masks.append(inner)
    return masks


class WaveletConditionalEnergy(AbstractEnergy):
    """The energy of one Haar scale given all the other wavelet coefficients:

    `log_density(c_B) = energy.log_density(haar_synthesis(c with block B set to c_B))`,

    a function of the block's coefficients only (event shape `(size of the block,)`, in the
    block's row-major order). It differs from the full log density by a constant in `c_B` (the
    terms that only involve the other scales), so it is the conditional density of the block up
    to normalization. For the finest block (`block = levels`) it is the conditional energy of
    the fine scale given the coarse field. With a `window`, coefficients outside
    `[-window, window]` get log density `-inf`.

    **Arguments:** `energy` (on a 1-D or square 2-D field), `coefficients` (the packed Haar
    coefficients of the current field: the context), `levels`, `block` (0 = coarsest, `levels` =
    finest), `window` (`None` or a positive float).
    """

    energy: AbstractEnergy
    coefficients: Array
    levels: int = eqx.field(static=True)
    block: int = eqx.field(static=True)
    window: float | None = eqx.field(static=True)
    event_shape: Shape = eqx.field(static=True)

    def __init__(self, energy, coefficients, levels: int, block: int, window=None):
        if not isinstance(energy, AbstractEnergy):
            raise TypeError(
                f"`energy` must be a driftax AbstractEnergy, got {type(energy).__name__}."
            )
        shape = tuple(energy.event_shape)
        levels = check_levels(levels, shape)
        coefficients = jnp.asarray(coefficients)
        if tuple(coefficients.shape) != shape:
            raise ValueError(
                f"`coefficients` must have the energy's event shape {shape}, got "
                f"{tuple(coefficients.shape)}."
            )
        if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block <= levels:
            raise ValueError(f"`block` must be an int in [0, {levels}], got {block!r}.")
        if window is not None:
            check_hyper(window, "window")
            window = float(window)
        self.energy, self.coefficients = energy, coefficients
        self.levels, self.block, self.window = levels, block, window
        self.event_shape = (int(haar_blocks(shape, levels)[block].sum()),)

    @property
    def mask(self) -> np.ndarray:
        """The block's boolean mask in the packed layout."""
        return haar_blocks(self.energy.event_shape, self.levels)[self.block]

    def field(self, block_coefficients: Array) -> Array:
        """The field with this block set to `block_coefficients` and the rest from the context."""
        idx = np.nonzero(self.mask)
        coeffs = self.coefficients.at[idx].set(block_coefficients)
        return haar_synthesis(coeffs, self.levels)

    def log_density(self, x) -> Scalar:
        x = jnp.asarray(x)
        logp = self.energy.log_density(self.field(x))
        if self.window is None:
            return logp
        inside = jnp.all(jnp.abs(x) <= self.window)
        return jnp.where(inside, logp, -jnp.inf)


class CoarseToFineMALA(AbstractSampler):
    """Coarse-to-fine conditional MALA on a multiscale field: each step sweeps the Haar scales
    from the coarsest approximation to the finest details, making one MALA move of each scale
    given all the others (on [`WaveletConditionalEnergy`][driftax.samplers.WaveletConditionalEnergy]),
    with that scale's own step size. Every move is Metropolis-adjusted and the Haar basis is
    orthonormal, so the sweep leaves the field's distribution invariant (Metropolis within
    Gibbs). Where the fine-given-coarse conditionals are strongly log-concave (as for φ⁴ near
    criticality, where the joint is not), the fine moves mix fast and tolerate large steps.

    With a `window`, a proposal with a coefficient of the moved scale outside
    `[-window, window]` is rejected (as in the windowed samplers of the CSLC code; it keeps
    large steps from escaping into the quartic tails).

    **Arguments:**

    - `step_sizes`: one positive step size per scale (`levels + 1` of them, coarse to fine),
      or one float for all.
    - `levels`: Haar levels (static, default 1; at most the number of times the side halves).
    - `window`: `None` (default) or a positive float.

    Costs `levels + 1` gradients per step (one per scale).

    **Example:**

    ```python
    import jax
    import driftax as dx

    target = dx.energies.phi4(16, variant="lattice", m2=-4.0, lam=8.0)
    sampler = dx.samplers.CoarseToFineMALA(step_sizes=(0.02, 0.03, 0.04), levels=2)
    result = dx.sample(sampler, target, jnp.zeros((16, 16)), key=jax.random.key(0),
                       num_steps=200, num_warmup=50, num_chains=2, check_health=False)
    ```
    """

    step_sizes: Array = eqx.field(converter=float_leaf)
    levels: int = eqx.field(static=True, default=1)
    window: float | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if isinstance(self.levels, (bool, np.bool_)) or not isinstance(
            self.levels, (int, np.integer)
        ):
            raise TypeError(f"`levels` must be an int, got {self.levels!r}.")
        if self.levels < 1:
            raise ValueError(f"`levels` must be >= 1, got {self.levels}.")
        shape = jnp.shape(self.step_sizes)
        if len(shape) > 1 or (len(shape) == 1 and shape[0] not in (1, self.levels + 1)):
            raise ValueError(
                f"`step_sizes` must be one float or {self.levels + 1} (one per scale), got "
                f"shape {shape}."
            )
        check_hyper(self.step_sizes, "step_sizes")
        if self.window is not None:
            check_hyper(self.window, "window")

    def _sizes(self, dtype) -> Array:
        sizes = jnp.reshape(self.step_sizes, (-1,)).astype(dtype)
        return jnp.broadcast_to(sizes, (self.levels + 1,))

    def _check(self, energy) -> tuple[int, ...]:
        if not isinstance(energy, AbstractEnergy):
            raise TypeError(
                f"`energy` must be a driftax AbstractEnergy, got {type(energy).__name__}."
            )
        shape = tuple(energy.event_shape)
        check_levels(self.levels, shape)
        return shape

    def init(self, energy: AbstractEnergy, x0: Array) -> MCMCState:
        self._check(energy)
        x0, logp, score = init_position(energy, x0)
        return MCMCState(position=x0, log_density=logp, score=score)

    def step(self, energy: AbstractEnergy, state: MCMCState, *, key: Key):
        shape = self._check(energy)
        dtype = jnp.result_type(state.position)
        masks = haar_blocks(shape, self.levels)
        keys = jax.random.split(key, 2 * len(masks))
        coeffs = haar_analysis(state.position, self.levels)
        logp, score = state.log_density, state.score
        assert score is not None
        g = haar_analysis(score, self.levels)  # the score in wavelet coordinates (orthonormal)
        accept = jnp.zeros((), dtype)
        divergent = jnp.zeros((), bool)
        worst = jnp.zeros((), dtype)
        for b, mask in enumerate(masks):
            h = self._sizes(dtype)[b]
            idx = np.nonzero(mask)
            c_b, g_b = coeffs[idx], g[idx]
            xi, _ = draws(keys[2 * b], jnp.shape(c_b), 0, dtype)
            prop_b = c_b + h * g_b + jnp.sqrt(2.0 * h) * xi
            prop = coeffs.at[idx].set(prop_b)
            logp_p, score_p = value_and_score_at(energy, haar_synthesis(prop, self.levels))
            g_p = haar_analysis(score_p, self.levels)
            fwd = jnp.sum((prop_b - c_b - h * g_b) ** 2) / (4.0 * h)
            bwd = jnp.sum((c_b - prop_b - h * g_p[idx]) ** 2) / (4.0 * h)
            log_ratio = logp_p - logp + fwd - bwd
            valid = jnp.all(jnp.isfinite(score_p))
            if self.window is not None:
                in_window = jnp.all(jnp.abs(prop_b) <= self.window)
                log_ratio = jnp.where(in_window, log_ratio, -jnp.inf)
                valid = valid & in_window
            (coeffs, logp, g), acc, _, div = metropolis_hastings(
                log_ratio, (prop, logp_p, g_p), (coeffs, logp, g), key=keys[2 * b + 1], valid=valid
            )
            if self.window is not None:  # a window rejection is not a divergence
                div = div & in_window
            accept = accept + acc.astype(dtype) / len(masks)
            divergent = divergent | div
            worst = jnp.maximum(worst, jnp.abs(safe_energy_error(-log_ratio)))
        position = haar_synthesis(coeffs, self.levels).astype(dtype)
        new = MCMCState(position=position, log_density=logp, score=haar_synthesis(g, self.levels))
        info = Info(
            acceptance_rate=accept,
            is_divergent=divergent,
            energy_error=worst,
            num_grad_evals=jnp.asarray(len(masks), jnp.int32),
        )
        return new, info


class PolynomialFieldAnsatz(AbstractEnergy):
    """The learned-ansatz energy of a lattice field, linear in its parameters:

    `−log_density(φ) = kinetic · Σ_x Σ_μ (φ(x+μ̂) − φ(x))² + Σ_k potential[k] · Σ_x φ(x)^(2k+2)`

    (periodic nearest-neighbour differences; a local even polynomial potential of degree
    `2 · len(potential)`). Its conditional energies of one Haar scale given the others
    ([`WaveletConditionalEnergy`][driftax.samplers.WaveletConditionalEnergy] of this energy) are
    the CSLC ansatz: quadratic in the fine coefficients through the kinetic and `φ²` terms, with
    local quartic (and higher) couplings of fine and coarse through `φ = W^T (coarse, fine)`.

    The exact φ⁴ lattice energy ([`phi4`][driftax.energies.phi4] with `variant="lattice"`) lies in
    the family: `kinetic = 1`, `potential = (m², λ)`. Fit the parameters from field samples with
    [`fit_conditional_ansatz`][driftax.samplers.fit_conditional_ansatz]; then sample with
    [`CoarseToFineMALA`][driftax.samplers.CoarseToFineMALA] on this energy. The density is
    normalizable when the last `potential` coefficient is positive (not checked while training).

    **Arguments:** `kinetic` (a float), `potential` (floats: the coefficients of `φ², φ⁴, …`),
    `shape` (the field's shape: `(n,)` or `(L, L)`).
    """

    kinetic: Array
    potential: Array
    event_shape: Shape = eqx.field(static=True)

    def __init__(self, kinetic, potential, shape):
        shape = tuple(int(s) for s in np.atleast_1d(np.asarray(shape)))
        if len(shape) not in (1, 2) or min(shape) < 2:
            raise ValueError(f"`shape` must be (n,) or (L, L) with sides >= 2, got {shape}.")
        kinetic = jnp.asarray(kinetic, float)
        potential = jnp.atleast_1d(jnp.asarray(potential, float))
        if kinetic.shape != () or potential.ndim != 1 or potential.shape[0] < 1:
            raise ValueError(
                "`kinetic` must be a float and `potential` a non-empty 1-D array, got shapes "
                f"{kinetic.shape} and {potential.shape}."
            )
        try:
            finite = bool(jnp.all(jnp.isfinite(kinetic)) & jnp.all(jnp.isfinite(potential)))
        except jax.errors.ConcretizationTypeError:  # traced parameters: checked by the fit
            finite = True
        if not finite:
            raise ValueError("`kinetic` and `potential` must be finite.")
        self.kinetic, self.potential, self.event_shape = kinetic, potential, shape

    def features(self, x) -> Array:
        """The sufficient statistics `(Σ (∇φ)², Σ φ², Σ φ⁴, …)`: `−log_density = θ · features`."""
        x = jnp.asarray(x)
        kin = sum(jnp.sum((jnp.roll(x, -1, a) - x) ** 2) for a in range(x.ndim))
        powers = [jnp.sum(x ** (2 * k + 2)) for k in range(self.potential.shape[0])]
        return jnp.stack([kin, *powers])

    @property
    def parameters(self) -> Array:
        """`(kinetic, *potential)`, the coefficients of `features`."""
        return jnp.concatenate([self.kinetic[None], self.potential])

    def log_density(self, x) -> Scalar:
        return -jnp.dot(self.parameters.astype(jnp.result_type(x)), self.features(x))


class _ConditionalSlicedSM(eqx.Module):
    """Sliced score matching (variance-reduced) of one Haar scale's conditional: for a field
    `φ`, block coefficients `d` and `v ~ N(0, I)` on the block, `½‖∇_d log p‖² + vᵀ ∇²_d log p v`.
    The Haar basis is orthonormal, so `∇_d` is the block of `W ∇_φ` and the block Hessian's
    quadratic form is the field Hessian's along `u = Wᵀ v`."""

    shape: tuple[int, ...] = eqx.field(static=True)
    levels: int = eqx.field(static=True)
    block: int = eqx.field(static=True)

    def __call__(self, model: PolynomialFieldAnsatz, batch, *, key):
        mask = haar_blocks(self.shape, self.levels)[self.block]
        idx = np.nonzero(mask)
        n_block = int(mask.sum())

        def one(x, k):
            v = jax.random.normal(k, (n_block,), x.dtype)
            u = haar_synthesis(jnp.zeros_like(x).at[idx].set(v), self.levels)
            score, hu = jax.jvp(jax.grad(model.log_density), (x,), (u,))
            s_block = haar_analysis(score, self.levels)[idx]
            return 0.5 * jnp.sum(s_block**2) + jnp.sum(u * hu)

        keys = jax.random.split(key, batch.shape[0])
        return jnp.mean(jax.vmap(one)(batch, keys))


def fit_conditional_ansatz(
    samples,
    *,
    key: Key,
    optimizer,
    num_steps: int,
    batch_size: int,
    levels: int = 1,
    block: int | None = None,
    degree: int = 4,
    init: PolynomialFieldAnsatz | None = None,
):
    """Fit a [`PolynomialFieldAnsatz`][driftax.samplers.PolynomialFieldAnsatz] to field samples by
    **conditional score matching** of one Haar scale given the others (the CSLC / wavelet
    conditional renormalization-group fit): the loss is the sliced, variance-reduced Hyvärinen
    score matching of the block's coefficients, whose minimizer over a family that contains the
    true conditional is the true conditional (here: the true field energy's parameters, up to
    those the block does not see). The ansatz is linear in its parameters, so the loss is
    quadratic in them. Runs on the shared training loop.

    **Arguments:**

    - `samples`: field configurations `(n, *shape)` (e.g. from HMC on the finer level).
    - `key`, `optimizer` (optax), `num_steps`, `batch_size`: as every driftax fit.
    - `levels`: Haar levels; `block`: the scale whose conditional is fitted (0 = coarsest,
      `levels` = finest, the default).
    - `degree`: the potential's degree (even, ≥ 2); ignored with `init`.
    - `init`: the starting ansatz (default `kinetic = 1`, `potential = (0, …, 0, 1)`).

    **Returns:** `(ansatz, losses)`, `losses` of shape `(num_steps,)`.
    """
    x = jnp.asarray(samples)
    if x.ndim not in (2, 3) or x.shape[0] < 1:
        raise ValueError(f"`samples` must have shape (n, L) or (n, L, L), got {x.shape}.")
    if not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError("`samples` must be finite.")
    shape = tuple(x.shape[1:])
    levels = check_levels(levels, shape)
    block = levels if block is None else block
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)):
        raise TypeError(f"`block` must be an int, got {block!r}.")
    if not 0 <= block <= levels:
        raise ValueError(f"`block` must be in [0, {levels}], got {block}.")
    if init is None:
        if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)):
            raise TypeError(f"`degree` must be an int, got {degree!r}.")
        if degree < 2 or degree % 2:
            raise ValueError(f"`degree` must be even and >= 2, got {degree}.")
        potential = np.zeros(degree // 2)
        potential[-1] = 1.0
        init = PolynomialFieldAnsatz(1.0, potential, shape)
    elif not isinstance(init, PolynomialFieldAnsatz):
        raise TypeError(f"`init` must be a PolynomialFieldAnsatz, got {type(init).__name__}.")
    elif tuple(init.event_shape) != shape:
        raise ValueError(
            f"`init` has shape {tuple(init.event_shape)} but the samples have shape {shape}."
        )
    batch_size = check_count(batch_size, "batch_size")
    loss = _ConditionalSlicedSM(shape, levels, int(block))
    batches = Minibatches(x.astype(init.kinetic.dtype), batch_size, replace=True)
    trained, history = train(
        init,
        loss,
        batches,
        key=key,
        optimizer=optimizer,
        num_steps=num_steps,
        desc="fit_conditional_ansatz",
    )
    return trained, history.losses
