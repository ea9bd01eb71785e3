"""Fixed-step solvers for the probability-flow ODE and the reverse SDE of a Gaussian path.

Every solver acts on ONE unbatched point; `solve` scans it over a time grid and vmaps it over
the batch. Exponential integrators (DDIM, DPM-Solver++, UniPC) work in the half log-SNR
`lambda = log(alpha / sigma)` with the data prediction; Euler and Heun integrate `dx/dt` in the
path's own time.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Key, Point, Scalar
from ..samplers import AbstractSampler
from ..samplers._base import AbstractStepSizeSampler
from ._model import AbstractField

State = Any


class AbstractSolver(eqx.Module):
    """A fixed-step solver: `init` once, then `step` from `t0` to `t1` for each grid interval.

    Solvers act on ONE unbatched point `x`; `driftax.diffusion.solve` scans `step` over a time
    grid (one `lax.scan`) and vmaps it over a batch.

    What every solver declares, as class constants (or properties where they depend on the
    solver's fields): `order` (global order of accuracy for smooth fields), `evals_per_step`
    (field evaluations per step, default 1), `stochastic` (whether `step` uses `key`, default
    False) and `exponential` (whether it works in log-SNR, which then must be finite on the
    grid; default False).
    """

    order: ClassVar[int]  # every solver sets it
    evals_per_step: ClassVar[int] = 1
    stochastic: ClassVar[bool] = False
    exponential: ClassVar[bool] = False

    def init(self, model: AbstractField, t0: Scalar, x0: Point) -> State:
        """The solver state before the first step (multistep history, ...; default none)."""
        del model, t0, x0
        return None

    @abc.abstractmethod
    def step(
        self,
        model: AbstractField,
        ts: Array,
        index: Array,
        x0: Point,
        state: State,
        *,
        key: Key,
    ) -> tuple[Point, State]:
        """One step from `(ts[index], x0)` to `ts[index + 1]`.

        **Arguments:**

        - `model`: the field with its path and parameterization (see `AbstractField`).
        - `ts`: the whole time grid, shape `(num_steps + 1,)` (multistep methods read their
          previous times from it); `index`: the step number, from 0.
        - `x0`: ONE unbatched point at `ts[index]`.
        - `state`: the solver state from `init` or the previous step.
        - `key`: a PRNG key for this step (ignored by deterministic solvers).

        **Returns:** `(x1, new_state)`.
        """


def _coeffs(path, t):
    return path.alpha(t), path.sigma(t), path.half_log_snr(t)


# ------------------------------------------------------------------------------ Euler, Heun


class Euler(AbstractSolver):
    """Explicit Euler on the probability-flow ODE `dx/dt = v(t, x)` (order 1, 1 NFE/step)."""

    order: ClassVar[int] = 1

    def step(self, model, ts, index, x0, state, *, key):
        t0, t1 = ts[index], ts[index + 1]
        return x0 + (t1 - t0) * model.velocity(t0, x0), None


class Heun(AbstractSolver):
    """Heun's method (explicit trapezoid) on the probability-flow ODE (order 2, 2 NFE/step), with
    the optional "churn" of Karras et al. (2022, Algorithm 2).

    With `churn > 0` each step first raises the noise level `sigma/alpha` by a factor
    `1 + gamma`, `gamma = min(churn / num_steps, sqrt(2) - 1)` when `sigma/alpha` lies in
    `[s_tmin, s_tmax]`, adding fresh noise scaled by `s_noise`, then takes the Heun step: a
    stochastic sampler that needs a `key`.
    """

    churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0

    order: ClassVar[int] = 2
    evals_per_step: ClassVar[int] = 2

    @property
    def stochastic(self) -> bool:
        return self.churn > 0

    def __check_init__(self):
        if not self.churn >= 0:
            raise ValueError(f"`churn` must be >= 0, got {self.churn}.")
        if not self.s_noise >= 0:
            raise ValueError(f"`s_noise` must be >= 0, got {self.s_noise}.")

    def step(self, model, ts, index, x0, state, *, key):
        t0, t1 = ts[index], ts[index + 1]
        num_steps = ts.shape[0] - 1
        if self.churn > 0:
            path = model.path
            a0, s0, lam0 = _coeffs(path, t0)
            level = jnp.exp(-lam0)
            gamma = jnp.where(
                (level >= self.s_tmin) & (level <= self.s_tmax),
                jnp.minimum(self.churn / num_steps, jnp.sqrt(2.0) - 1.0),
                0.0,
            )
            lo, hi = path.domain
            t_hat = jnp.clip(path.t_from_half_log_snr(lam0 - jnp.log1p(gamma)), lo, hi)
            t_hat = jnp.where(gamma > 0, t_hat, t0)
            level_hat = jnp.exp(-path.half_log_snr(t_hat))
            extra = jnp.sqrt(jnp.maximum(level_hat**2 - level**2, 0.0))
            z = jax.random.normal(key, x0.shape, x0.dtype)
            x0 = path.alpha(t_hat) * (x0 / a0 + self.s_noise * extra * z)
            t0 = t_hat
        h = t1 - t0
        v0 = model.velocity(t0, x0)
        x_pred = x0 + h * v0
        v1 = model.velocity(t1, x_pred)
        return x0 + 0.5 * h * (v0 + v1), None


# ---------------------------------------------------------------------------------- DDIM


class DDIM(AbstractSolver):
    """DDIM (Song, Meng, Ermon 2021), the first-order exponential integrator in the data
    prediction (= DPM-Solver++ 1). With `eta > 0` it adds fresh noise (`eta = 1`: ancestral
    DDPM sampling, a discretisation of the reverse SDE) and needs a `key`.
    """

    eta: float = 0.0

    order: ClassVar[int] = 1
    exponential: ClassVar[bool] = True

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    def __check_init__(self):
        if not self.eta >= 0:
            raise ValueError(f"`eta` must be >= 0, got {self.eta}.")

    def step(self, model, ts, index, x0, state, *, key):
        t0, t1 = ts[index], ts[index + 1]
        path = model.path
        a0, s0, lam0 = _coeffs(path, t0)
        a1, s1, lam1 = _coeffs(path, t1)
        d = model.denoise(t0, x0)
        h = lam1 - lam0
        if self.eta == 0:
            return (s1 / s0) * x0 - a1 * jnp.expm1(-h) * d, None
        eps = (x0 - a0 * d) / s0
        c = jnp.minimum(self.eta * s1 * jnp.sqrt(-jnp.expm1(-2.0 * h)), s1)
        z = jax.random.normal(key, x0.shape, x0.dtype)
        return a1 * d + jnp.sqrt(s1**2 - c**2) * eps + c * z, None


# -------------------------------------------------------------------- multistep machinery
#
# The history of data predictions lives in the (per-example) state; everything that depends
# only on the grid -- previous half log-SNRs, how many history entries are valid, the order of
# each step -- is computed from `ts` and `index`, so it is the same for the whole batch and the
# order is chosen with `lax.switch` (only one branch runs).


def _push(hist: Array, d: Point) -> Array:
    """Most recent first."""
    return jnp.concatenate([d[None], hist[:-1]], axis=0)


def _grid_lams(lam, index, size):
    """`lam[index - 1 - j]` for `j < size` (`lam`: the half log-SNR of the grid) and how many
    of them are usable: entries before the grid start, and the start itself when its log-SNR is
    infinite (alpha = 0), are not."""
    idx = index - 1 - jnp.arange(size)
    first = jnp.where(jnp.isfinite(lam[0]), 0, 1)
    count = jnp.clip(index - first, 0, size)
    return lam[jnp.clip(idx, 0, lam.shape[0] - 1)], count


def _safe(prev_lam, count, lam_now, h, hist, d_now):
    """Replace unusable history entries by finite dummies (their branch is never taken)."""
    size = prev_lam.shape[0]
    valid = jnp.arange(size) < count
    lam = jnp.where(valid, prev_lam, lam_now - (jnp.arange(size) + 1) * h)
    data = jnp.where(valid.reshape((size,) + (1,) * d_now.ndim), hist, d_now[None])
    return lam, data


def _effective_order(order, count, index, num_steps, lower_order_final, finite_h, xp=jnp):
    """The order of each step: limited by the usable history (`count`), by `lower_order_final`
    over the last steps of short grids, and 1 where the step's log-SNR increment is infinite."""
    k = xp.minimum(order, count + 1)
    if lower_order_final and num_steps < 15:
        k = xp.minimum(k, num_steps - index)
    k = xp.where(finite_h, k, 1)
    return xp.clip(k, 1, order).astype(xp.int32)


def _history_count(xp, lam, idx, size):
    """How many previous grid points each step may use (the noise end does not count when its
    log-SNR is infinite, alpha = 0), at most `size`."""
    first = xp.where(xp.isfinite(lam[0]), 0, 1)
    return xp.clip(idx - first, 0, size)


def _pick(xp, k, by_order):
    """`by_order[k - 1]` elementwise (`k` an integer array)."""
    out = by_order[-1]
    for j in range(len(by_order) - 1, 0, -1):
        out = xp.where(k == j, by_order[j - 1], out)
    return out


class Grid(NamedTuple):
    """A time grid and the path's coefficients on it (arrays of `num_steps + 1`)."""

    t: Any
    alpha: Any
    sigma: Any
    lam: Any
    dalpha: Any = None
    dsigma: Any = None
    t_quad: Any = None


def grid_of(path, ts, *, derivatives: bool = False, quadrature=None) -> Grid:
    """The path's coefficients on the grid `ts` (jax arrays); `quadrature(path, ts)` gives
    extra times inside each interval where a solver needs them."""
    alpha, sigma, lam = path.alpha(ts), path.sigma(ts), path.half_log_snr(ts)
    da = ds = None
    if derivatives:
        (_, da), (_, ds) = path.alpha_and_derivative(ts), path.sigma_and_derivative(ts)
    t_quad = None if quadrature is None else quadrature(path, ts)
    return Grid(ts, alpha, sigma, lam, da, ds, t_quad)


class Rows(NamedTuple):
    """Coefficients of the steps `idx` (each of shape `idx.shape`; `c` with a trailing `K + 1`)."""

    cx: Any
    cd: Any
    c: Any


class _AbstractTableSolver(AbstractSolver):
    """A linear multistep solver given by its coefficient rows: on ONE point,

        x1 = cx x0 + cd f0 + sum_{m=0..K} c_m q_{i-m},     q_i = px_i x_i + pd_i f_i,

    with `f_i` the field at `(t_i, x_i)` in the parameterization `evaluate`, `q` the quantity
    kept in the history (K = `history` previous values) and every coefficient a function of the
    time grid only. The coefficients are written once, vectorized over step indices for an array
    namespace `xp`: `step` evaluates them with `jax.numpy` for one (traced) index, while `solve`
    evaluates the whole table eagerly with NumPy before its loop, so the compiled loop holds
    only the field and a few multiply-adds (a cheap compile: a fast cold start)."""

    evaluate: ClassVar[str] = "data"

    @property
    @abc.abstractmethod
    def history(self) -> int:
        """The number K of previous values of `q` the update uses."""

    @abc.abstractmethod
    def rows(self, xp, grid: Grid, idx) -> Rows:
        """The coefficients of the steps `idx` (an integer array) on `grid`, computed with the
        array namespace `xp` (`numpy` or `jax.numpy`)."""

    def q_weights(self, xp, grid: Grid):
        """`(px, pd)` on every grid point: `q = px x + pd f` (default: `q = f`)."""
        return xp.zeros_like(grid.alpha), xp.ones_like(grid.alpha)

    def quadrature(self, path, ts):
        """Extra times inside each interval that `rows` reads from `Grid.t_quad` (default none)."""
        del path, ts
        return None

    def init(self, model, t0, x0):
        return jnp.zeros((self.history, *x0.shape), x0.dtype)

    def step(self, model, ts, index, x0, state, *, key):
        grid = grid_of(
            model.path, ts, derivatives=self.evaluate == "velocity", quadrature=self.quadrature
        )
        r = self.rows(jnp, grid, jnp.asarray(index)[None])
        px, pd = self.q_weights(jnp, grid)
        f0 = model.get(ts[index], x0, self.evaluate)
        q0 = px[index] * x0 + pd[index] * f0
        x1 = r.cx[0] * x0 + r.cd[0] * f0 + r.c[0, 0] * q0
        for m in range(self.history):  # history the order cannot use has coefficient 0
            x1 = x1 + r.c[0, m + 1] * state[m]
        new_state = jnp.concatenate([q0[None], state[:-1]], axis=0) if self.history else state
        return x1.astype(x0.dtype), new_state


def _dpm_rows(xp, grid, idx, order, lower_order_final):
    """DPM-Solver++(kM) coefficients (Lu et al. 2022b) on the data-prediction history."""
    n = grid.t.shape[0] - 1
    lam, a, s = grid.lam, grid.alpha, grid.sigma
    lam0, lam1 = lam[idx], lam[idx + 1]
    a1, s0, s1 = a[idx + 1], s[idx], s[idx + 1]
    h = lam1 - lam0
    finite_h = xp.isfinite(h) & xp.isfinite(lam0)
    count = _history_count(xp, lam, idx, order - 1)
    k = _effective_order(order, count, idx, n, lower_order_final, finite_h, xp=xp)
    hs = xp.where(finite_h, h, 1.0)
    lam0s = xp.where(xp.isfinite(lam0), lam0, 0.0)
    # previous half log-SNRs; finite dummies where the history is not usable (never selected)
    prev = [
        xp.where(j <= count, lam[xp.clip(idx - j, 0, n)], lam0s - j * hs) for j in range(1, order)
    ]
    zero = xp.zeros_like(hs)
    phi1 = xp.expm1(-hs)
    by_order = [[-a1 * xp.expm1(-h)] + [zero] * (order - 1)]  # order 1 (exact also for h = inf)
    if order >= 2:
        # order 2 (Lu et al. 2022b, Alg. 2): - a1 phi1 d0 - a1 phi1 (d0 - prev0) / (2 r0)
        r0 = (lam0s - prev[0]) / hs
        by_order.append(
            [-a1 * phi1 * (1.0 + 0.5 / r0), 0.5 * a1 * phi1 / r0] + [zero] * (order - 2)
        )
    if order == 3:
        # d1_0 = (d0 - prev0)/r0, d1_1 = (prev0 - prev1)/r1,
        # D1 = d1_0 + r0/(r0 + r1) (d1_0 - d1_1) ~ h D', D2 = (d1_0 - d1_1)/(r0 + r1) ~ h^2 D''/2;
        # D(lambda) integrated against e^(lambda - lambda_1): the linear term gives
        # + a1 phi2 D1, the quadratic one -a1 phi3 h^2 D'' = -2 a1 phi3 D2 (the factor 2 is
        # needed for third order: without it the method is second order).
        r1 = (prev[0] - prev[1]) / hs
        phi2 = phi1 / hs + 1.0
        phi3 = phi2 / hs - 0.5
        w = r0 / (r0 + r1)
        c_d10 = a1 * phi2 * (1.0 + w) - 2.0 * a1 * phi3 / (r0 + r1)  # coefficient of d1_0
        c_d11 = -a1 * phi2 * w + 2.0 * a1 * phi3 / (r0 + r1)  # coefficient of d1_1
        by_order.append([-a1 * phi1 + c_d10 / r0, -c_d10 / r0 + c_d11 / r1, -c_d11 / r1])
    c = xp.stack([_pick(xp, k, [b[m] for b in by_order]) for m in range(order)], axis=-1)
    return Rows(s1 / s0, zero, c)


class _AbstractDPMSolverPP(_AbstractTableSolver):
    """Multistep DPM-Solver++ (Lu et al. 2022) in the data prediction; warm-up with lower
    orders; with `lower_order_final`, the last steps use lower orders when `num_steps < 15`."""

    lower_order_final: eqx.AbstractVar[bool]

    exponential: ClassVar[bool] = True

    @property
    def history(self) -> int:
        return self.order - 1

    def rows(self, xp, grid, idx):
        return _dpm_rows(xp, grid, idx, self.order, self.lower_order_final)


class DPMSolverPP2M(_AbstractDPMSolverPP):
    """DPM-Solver++(2M): second-order multistep exponential integrator, 1 NFE/step."""

    lower_order_final: bool = True

    order: ClassVar[int] = 2


class DPMSolverPP3M(_AbstractDPMSolverPP):
    """DPM-Solver++(3M): third-order multistep exponential integrator, 1 NFE/step."""

    lower_order_final: bool = True

    order: ClassVar[int] = 3


# ---------------------------------------------------------------------- single-step DPM-Solver


class _AbstractSinglestepDPMSolver(AbstractSolver):
    """Single-step DPM-Solver (Lu et al. 2022a) in the data-prediction form of DPM-Solver++
    (Lu et al. 2022b): each step from `lambda_s` to `lambda_t = lambda_s + h` evaluates the
    model at `order - 1` intermediate half log-SNRs `lambda_s + r_i h` as well as at the start,
    so the NFE is `order × num_steps`; no history is kept.

    The update integrates the Taylor expansion of the data prediction `D(lambda)` exactly against
    `e^(lambda - lambda_t)` (the φ-functions), with the derivatives estimated from the stage
    values; it is exact when `D` is a polynomial of degree `order - 1` in `lambda` that does not
    depend on `x`. A step with an infinite log-SNR end (`alpha = 0` at `t_noise`, or `sigma = 0`
    at `t_data`) is a first-order (DDIM) step, as in the multistep solvers.
    """

    @property
    def evals_per_step(self) -> int:
        return self.order

    exponential: ClassVar[bool] = True

    def _stage(self, model, x, s0, lam0, d0, h, r):
        """The point at `lambda_s + r h` by the first-order update, its time and coefficients."""
        path = model.path
        lam = lam0 + r * h
        t = path.t_from_half_log_snr(lam)
        a, s = path.alpha(t), path.sigma(t)
        return t, a, s, (s / s0) * x - a * jnp.expm1(-r * h) * d0

    @abc.abstractmethod
    def _high_order(self, model, x0, s0, lam0, d0, h, a1, s1):
        """The full-order update over a step with a finite log-SNR increment `h`."""

    def step(self, model, ts, index, x0, state, *, key):
        path = model.path
        t0, t1 = ts[index], ts[index + 1]
        a0, s0, lam0 = _coeffs(path, t0)
        a1, s1, lam1 = _coeffs(path, t1)
        d0 = model.denoise(t0, x0)
        h = lam1 - lam0
        finite_h = jnp.isfinite(h) & jnp.isfinite(lam0)
        hs = jnp.where(finite_h, h, 1.0)
        lam0s = jnp.where(jnp.isfinite(lam0), lam0, 0.0)

        def first(_):
            return (s1 / s0) * x0 - a1 * jnp.expm1(-h) * d0

        def full(_):
            return self._high_order(model, x0, s0, lam0s, d0, hs, a1, s1)

        return jax.lax.cond(finite_h, full, first, None), None


class DPMSolverPP2S(_AbstractSinglestepDPMSolver):
    """DPM-Solver++(2S): second-order single-step exponential integrator in the data prediction,
    one intermediate evaluation at the log-SNR midpoint (`r1 = 1/2`); 2 NFE/step.

    `x_t = (sigma_t/sigma_s) x - alpha_t phi_1 D_s + (alpha_t phi_2 / r1) (D_u - D_s)`, with
    `phi_1 = expm1(-h)`, `phi_2 = phi_1 / h + 1` and `u` the DDIM point at `lambda_s + r1 h`.
    """

    r1: float = eqx.field(default=0.5, static=True)

    def __check_init__(self):
        if not 0 < self.r1 < 1:
            raise ValueError(f"`r1` must lie in (0, 1), got {self.r1}.")

    order: ClassVar[int] = 2

    def _high_order(self, model, x0, s0, lam0, d0, h, a1, s1):
        r1 = self.r1
        t_u, _, _, u = self._stage(model, x0, s0, lam0, d0, h, r1)
        d_u = model.denoise(t_u, u)
        phi1 = jnp.expm1(-h)
        phi2 = phi1 / h + 1.0
        return (s1 / s0) * x0 - a1 * phi1 * d0 + (a1 * phi2 / r1) * (d_u - d0)


class DPMSolverPP3S(_AbstractSinglestepDPMSolver):
    """DPM-Solver++(3S): third-order single-step exponential integrator in the data prediction,
    intermediate evaluations at `lambda_s + h/3` and `lambda_s + 2h/3`; 3 NFE/step.

    The second stage is the second-order point
    `u2 = (sigma_2/sigma_s) x - alpha_2 phi_1(r2 h) D_s + alpha_2 phi_2(r2 h) (r2/r1) (D_1 - D_s)`;
    the update is `x_t = (sigma_t/sigma_s) x - alpha_t phi_1 D_s + alpha_t phi_2 D' - alpha_t
    phi_3 D''` with `D' = (r2 D1_0 - r1 D1_1)/(r2 - r1)` (≈ `h dD/dlambda`),
    `D'' = 2 (D1_1 - D1_0)/(r2 - r1)` (≈ `h² d²D/dlambda²`), `D1_i = (D_{i+1} - D_s)/r_{i+1}`
    and `phi_3 = phi_2 / h - 1/2`.
    """

    order: ClassVar[int] = 3

    def _high_order(self, model, x0, s0, lam0, d0, h, a1, s1):
        r1, r2 = 1.0 / 3.0, 2.0 / 3.0
        t_1, _, _, u1 = self._stage(model, x0, s0, lam0, d0, h, r1)
        d1 = model.denoise(t_1, u1)
        t_2, a_2, _, u2 = self._stage(model, x0, s0, lam0, d0, h, r2)
        phi2_r2 = jnp.expm1(-r2 * h) / (r2 * h) + 1.0
        u2 = u2 + a_2 * phi2_r2 * (r2 / r1) * (d1 - d0)
        d2 = model.denoise(t_2, u2)
        d1_0 = (d1 - d0) / r1
        d1_1 = (d2 - d0) / r2
        deriv1 = (r2 * d1_0 - r1 * d1_1) / (r2 - r1)
        deriv2 = 2.0 * (d1_1 - d1_0) / (r2 - r1)
        phi1 = jnp.expm1(-h)
        phi2 = phi1 / h + 1.0
        phi3 = phi2 / h - 0.5
        return (s1 / s0) * x0 - a1 * phi1 * d0 + a1 * phi2 * deriv1 - a1 * phi3 * deriv2


# ---------------------------------------------------------------------------------- UniPC


def _unipc_rb(k: int, h: Scalar, rks: list, variant: str):
    """UniPC's `R` (k×k, rows `rks^(i-1)`), `b` and `B(h)` for order `k` (data prediction)."""
    hh = -h
    h_phi_1 = jnp.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = hh if variant == "bh1" else jnp.expm1(hh)
    rks_all = jnp.stack([*rks, jnp.ones_like(h)])
    rows, bs = [], []
    factorial = 1.0
    for i in range(1, k + 1):
        rows.append(rks_all ** (i - 1))
        bs.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return jnp.stack(rows), jnp.stack(bs), h_phi_1, b_h


def _solve_small(r, b):
    """`r^{-1} b` for a 1×1, 2×2 or 3×3 system by Cramer's rule (cheap to compile, no pivoting:
    UniPC's Vandermonde-like systems are well conditioned for distinct nodes)."""
    k = b.shape[0]
    if k == 1:
        return b / r[0, 0]
    if k == 2:
        det = r[0, 0] * r[1, 1] - r[0, 1] * r[1, 0]
        return jnp.stack([r[1, 1] * b[0] - r[0, 1] * b[1], r[0, 0] * b[1] - r[1, 0] * b[0]]) / det
    cof = jnp.stack([jnp.cross(r[1], r[2]), jnp.cross(r[2], r[0]), jnp.cross(r[0], r[1])])
    det = jnp.dot(r[0], cof[0])
    return (cof.T @ b) / det


class _UniPCState(eqx.Module):
    hist: Array  # data predictions, most recent first
    x_prev: Array  # the (corrected) point the last predictor started from


class UniPC(AbstractSolver):
    """UniPC (Zhao et al. 2023): multistep predictor UniP-`solver_order` with the corrector UniC,
    which reuses the next step's field evaluation (1 NFE/step; order `solver_order + 1` with the
    corrector). `variant` is `"bh2"` (default) or `"bh1"`; data prediction.
    """

    solver_order: int = eqx.field(default=2, static=True)
    variant: str = eqx.field(default="bh2", static=True)
    corrector: bool = eqx.field(default=True, static=True)
    lower_order_final: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        if self.solver_order not in (1, 2, 3):
            raise ValueError(f"`solver_order` must be 1, 2 or 3, got {self.solver_order!r}.")
        if self.variant not in ("bh1", "bh2"):
            raise ValueError(f"`variant` must be 'bh1' or 'bh2', got {self.variant!r}.")

    @property
    def order(self) -> int:
        return self.solver_order + 1 if self.corrector else self.solver_order

    exponential: ClassVar[bool] = True

    def init(self, model, t0, x0):
        return _UniPCState(hist=jnp.zeros((self.solver_order, *x0.shape), x0.dtype), x_prev=x0)

    def _coefs(self, k: int, lam0, prev_lam, a1, h, corrector: bool):
        """Scalar coefficients `(c_m0, [c_prev_j for j < solver_order], c_dt)` of the order-`k`
        update `x1 = (s1/s0) x + c_m0 m0 + sum_j c_prev_j prev_j + c_dt d_t` (UniP when
        `corrector` is False, then `c_dt = 0`; UniC, which uses the model `d_t` at t1, else).
        They depend on the grid only, so every order's are computed on scalars and the right
        ones selected: no branch over x-sized arrays."""
        zero = jnp.zeros_like(h)
        rks = [(prev_lam[i] - lam0) / h for i in range(k - 1)]
        r, b, h_phi_1, b_h = _unipc_rb(k, h, rks, self.variant)
        c_m0 = -a1 * h_phi_1
        c_prev = [zero] * self.solver_order
        c_dt = zero
        if corrector:
            rhos = jnp.array([0.5], h.dtype) if k == 1 else _solve_small(r, b)
        elif k == 1:
            return c_m0, c_prev, c_dt
        else:
            rhos = jnp.array([0.5], h.dtype) if k == 2 else _solve_small(r[:-1, :-1], b[:-1])
        for j in range(k - 1):  # - a1 b_h rhos_j (prev_j - m0) / rks_j
            c = -a1 * b_h * rhos[j] / rks[j]
            c_prev[j] = c
            c_m0 = c_m0 - c
        if corrector:  # - a1 b_h rhos_last (d_t - m0)
            c_dt = -a1 * b_h * rhos[-1]
            c_m0 = c_m0 - c_dt
        return c_m0, c_prev, c_dt

    def _combine(self, k, coefs_by_order, cx, x, m0, prev, d_t=None):
        """Select the coefficients of order `k` (a traced int) and apply them."""
        orders = range(1, len(coefs_by_order) + 1)

        def pick(get):
            vals = [get(c) for c in coefs_by_order]
            return jnp.select([k == j for j in orders], vals, vals[-1])

        out = cx * x + pick(lambda c: c[0]) * m0
        for j in range(self.solver_order):
            out = out + pick(lambda c, j=j: c[1][j]) * prev[j]
        if d_t is not None:
            out = out + pick(lambda c: c[2]) * d_t
        return out

    def _order_at(self, lam, i):
        """The predictor order used at step `i` (unbatched: a function of the grid only)."""
        num_steps = lam.shape[0] - 1
        ic = jnp.clip(i, 0, num_steps - 1)
        finite_h = jnp.isfinite(lam[ic + 1] - lam[ic]) & jnp.isfinite(lam[ic])
        _, count = _grid_lams(lam, ic, self.solver_order)
        return _effective_order(
            self.solver_order, count, ic, num_steps, self.lower_order_final, finite_h
        )

    def step(self, model, ts, index, x0, state, *, key):
        path = model.path
        p = self.solver_order
        t0, t1 = ts[index], ts[index + 1]
        lam = path.half_log_snr(ts)
        lam0, lam1 = lam[index], lam[index + 1]
        a0, s0, a1, s1 = path.alpha(t0), path.sigma(t0), path.alpha(t1), path.sigma(t1)
        d0 = model.denoise(t0, x0)
        hist = state.hist
        lam0s = jnp.where(jnp.isfinite(lam0), lam0, 0.0)
        prev_lam_all, count = _grid_lams(lam, index, p)  # lambda(ts[index - 1 - j])
        # Corrector: fix x0 (predicted at the last step from x_prev) with the new evaluation d0.
        # History entries that are not valid get coefficient 0 (the order is limited by the
        # count); their log-SNRs are replaced by finite dummies.
        if self.corrector:
            t_p = ts[jnp.maximum(index - 1, 0)]
            s_p = path.sigma(t_p)
            lam_p = prev_lam_all[0]
            ok = (count >= 1) & jnp.isfinite(lam0)
            hc = jnp.where(ok, lam0s - lam_p, 1.0)
            older_lam, _ = _safe(
                prev_lam_all[1:], jnp.maximum(count - 1, 0), lam_p, hc, hist[1:], hist[0]
            )
            k_prev = self._order_at(lam, index - 1)
            coefs = [self._coefs(kk, lam_p, older_lam, a0, hc, True) for kk in range(1, p + 1)]
            older = jnp.concatenate([hist[1:], jnp.zeros_like(hist[:1])], axis=0)
            x_corr = self._combine(k_prev, coefs, s0 / s_p, state.x_prev, hist[0], older, d0)
            x0 = jnp.where(ok, x_corr, x0)
        # Predictor from the corrected x0 with the history including d0.
        h = lam1 - lam0
        finite_h = jnp.isfinite(h) & jnp.isfinite(lam0)
        hs = jnp.where(finite_h, h, 1.0)
        k = self._order_at(lam, index)
        prev_lam, _ = _safe(prev_lam_all, count, lam0s, hs, hist, d0)
        coefs = [self._coefs(kk, lam0s, prev_lam, a1, hs, False) for kk in range(1, p + 1)]
        # the exact first-order limit also when h is infinite (sigma(t1) = 0)
        coefs[0] = (-a1 * jnp.expm1(-h), coefs[0][1], coefs[0][2])
        x1 = self._combine(k, coefs, s1 / s0, x0, d0, hist)
        return x1, _UniPCState(hist=_push(hist, d0), x_prev=x0)


# ---------------------------------------------------------------------------- SDE solvers


def _epsilon_at(epsilon, path, t):
    if epsilon is None:
        return path.epsilon(t)
    if callable(epsilon):
        return jnp.asarray(epsilon(t))
    return jnp.asarray(epsilon, jnp.result_type(float))


class EulerMaruyama(AbstractSolver):
    """Euler–Maruyama for the family of reverse SDEs with the path's marginals:
    `dx = (v + eps(t) s) dtau + sqrt(2 eps(t)) dW`, `tau` running from noise to data (`v` the
    probability-flow velocity, `s` the score).

    `epsilon` is `None` (the path's own reverse SDE, `eps = g^2 / 2`, see
    `AbstractPath.epsilon`), a non-negative number, or a callable `t -> eps(t)`: the tunable
    diffusion of stochastic interpolants. `epsilon=0` is the Euler ODE solver.
    Strong order 1/2, weak order 1; 1 NFE/step.
    """

    epsilon: float | Callable | None = None

    def __check_init__(self):
        e = self.epsilon
        if e is not None and not callable(e):
            if not (isinstance(e, (int, float)) and e >= 0):
                raise ValueError(f"`epsilon` must be None, a number >= 0 or a callable, got {e!r}.")

    order: ClassVar[int] = 1
    stochastic: ClassVar[bool] = True

    def step(self, model, ts, index, x0, state, *, key):
        t0, t1 = ts[index], ts[index + 1]
        v, s = model.get_many(t0, x0, ("velocity", "score"))
        dt = t1 - t0
        eps = _epsilon_at(self.epsilon, model.path, t0)
        z = jax.random.normal(key, x0.shape, x0.dtype)
        return x0 + dt * v + eps * jnp.abs(dt) * s + jnp.sqrt(2.0 * eps * jnp.abs(dt)) * z, None


# ---------------------------------------------------------------------- predictor-corrector


class AbstractCorrector(eqx.Module):
    """A corrector of [`PredictorCorrector`][]: `num_steps` moves at time `t` that leave (an
    approximation of) the time-t marginal `p_t` invariant.

    Subclasses implement `correct(model, t, x, *, key) -> x` on ONE unbatched point;
    [`LangevinCorrector`][] uses the model's score, [`SamplerCorrector`][] adapts any
    `driftax.samplers` kernel. `num_steps` counts the field (or energy) evaluations it adds to
    each solver step: every subclass has this field.
    """

    @abc.abstractmethod
    def correct(self, model: AbstractField, t: Scalar, x: Point, *, key: Key) -> Point:
        """The corrected point at time `t`, from `x`."""


class LangevinCorrector(AbstractCorrector):
    """Unadjusted Langevin steps on the time-t score: `x <- x + delta s + sqrt(2 delta) z`.

    The step is `delta = 2 (snr · sigma(t))^2`: the signal-to-noise rule of Song et al. (2021),
    `delta = 2 (snr ||z|| / ||s||)^2`, with the norms replaced by their values for Gaussian
    noise of scale `sigma(t)` (`E||s||^2 ~ d / sigma^2`, `E||z||^2 = d`). Per-example norms
    would blow the step up wherever the score vanishes (at a mode); `sigma(t)^-2` also bounds the
    curvature of `log p_t`, so the step is always stable.

    A local corrector: it needs only the score, so it works for any parameterization (a
    `driftax.samplers` kernel would need a time-t energy with a log density).
    """

    snr: float = 0.16
    num_steps: int = eqx.field(default=1, static=True)

    def __check_init__(self):
        if not self.snr > 0:
            raise ValueError(f"`snr` must be positive, got {self.snr}.")
        if not (isinstance(self.num_steps, int) and self.num_steps >= 1):
            raise ValueError(f"`num_steps` must be a positive int, got {self.num_steps!r}.")

    def correct(self, model: AbstractField, t: Scalar, x: Point, *, key: Key) -> Point:
        """`num_steps` Langevin steps at time `t` from `x`."""
        delta = 2.0 * (self.snr * model.path.sigma(t)) ** 2

        def body(i, x):
            s = model.score(t, x)
            z = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
            return x + delta * s + jnp.sqrt(2.0 * delta) * z

        return jax.lax.fori_loop(0, self.num_steps, body, x)


class SamplerCorrector(AbstractCorrector):
    """A corrector that runs `num_steps` of any `driftax.samplers` kernel (e.g. `ULA`, `MALA`,
    `HMC`) on the time-t energy `energy_at(t)` (an `AbstractEnergy`, e.g.
    `NoisedGaussianMixture.at` or an energy-parameterized model).

    With `relative_step_size=True` the kernel's `step_size` is multiplied by `sigma(t)^2`
    (the curvature scale of `log p_t`), so one setting serves the whole time range.
    """

    sampler: AbstractSampler
    energy_at: Callable
    num_steps: int = eqx.field(default=1, static=True)
    relative_step_size: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        if not isinstance(self.sampler, AbstractSampler):
            raise TypeError("`sampler` must be a driftax.samplers AbstractSampler.")
        if not callable(self.energy_at):
            raise TypeError("`energy_at` must be a callable t -> AbstractEnergy.")
        if not (isinstance(self.num_steps, int) and self.num_steps >= 1):
            raise ValueError(f"`num_steps` must be a positive int, got {self.num_steps!r}.")

    def correct(self, model: AbstractField, t: Scalar, x: Point, *, key: Key) -> Point:
        """`num_steps` kernel steps on `energy_at(t)` from `x`."""
        energy = self.energy_at(t)
        kernel = self.sampler
        if self.relative_step_size and isinstance(kernel, AbstractStepSizeSampler):
            scale = model.path.sigma(t) ** 2
            kernel = eqx.tree_at(lambda k: k.step_size, kernel, kernel.step_size * scale)
        state = kernel.init(energy, x)

        def body(i, state):
            return kernel.step(energy, state, key=jax.random.fold_in(key, i))[0]

        return jax.lax.fori_loop(0, self.num_steps, body, state).position


class PredictorCorrector(AbstractSolver):
    """Predictor–corrector sampling (Song et al. 2021): a `predictor` step (any solver, default
    reverse-SDE Euler–Maruyama) followed by `corrector` steps at the new time: Langevin on the
    model's score ([`LangevinCorrector`][], default) or any `driftax.samplers` kernel on a
    time-t energy ([`SamplerCorrector`][]), or any [`AbstractCorrector`][]. NFE per step: the predictor's plus
    `corrector.num_steps`.
    """

    predictor: AbstractSolver = EulerMaruyama()
    corrector: AbstractCorrector = LangevinCorrector()

    def __check_init__(self):
        if not isinstance(self.predictor, AbstractSolver):
            raise TypeError("`predictor` must be a driftax.diffusion AbstractSolver.")
        if isinstance(self.predictor, PredictorCorrector):
            raise TypeError("`predictor` must not itself be a PredictorCorrector.")
        if not isinstance(self.corrector, AbstractCorrector):
            raise TypeError(
                "`corrector` must be a driftax.diffusion AbstractCorrector (LangevinCorrector, "
                "or SamplerCorrector(kernel, energy_at) for any driftax.samplers kernel), got "
                f"{type(self.corrector).__name__}."
            )

    @property
    def order(self) -> int:
        return self.predictor.order

    @property
    def evals_per_step(self) -> int:
        # every corrector has a `num_steps` field; the base cannot declare it (a string
        # `eqx.AbstractVar` annotation would become a real field and reorder subclass fields)
        n = self.corrector.num_steps  # pyright: ignore[reportAttributeAccessIssue]
        return self.predictor.evals_per_step + n

    stochastic: ClassVar[bool] = True

    @property
    def exponential(self) -> bool:
        return self.predictor.exponential

    def init(self, model, t0, x0):
        return self.predictor.init(model, t0, x0)

    def step(self, model, ts, index, x0, state, *, key):
        kp, kc = jax.random.split(key)
        x1, state = self.predictor.step(model, ts, index, x0, state, key=kp)
        return self.corrector.correct(model, ts[index + 1], x1, key=kc), state
