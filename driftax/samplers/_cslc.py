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
