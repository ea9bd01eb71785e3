"""The microcanonical samplers' own warmup: `MCLMCAdaptation` and `MAMSAdaptation`.

Both share one schedule over the warmup steps, pooled across all chains (one step size, one
`L`, one diagonal metric for every chain):

1. **Phase A** (the first 40%): step size tuning from the sampler's default start. In the
   second half of the phase the chains' positions are accumulated (Welford) and `L` follows
   the spread of the draws, `L = √(Σᵢ Var[xᵢ]/M⁻¹ᵢ)` (the whitened radius of the target). At the
   end the diagonal metric becomes the (regularized) pooled variance, and `L` the whitened
   radius.
2. **Phase B** (up to 75%): step size tuning goes on with the new metric while a
   (thinned) trace of every chain is kept; at its end `L` is set from the trace's
   autocorrelation (never below half a step).
3. **Length comparison** (MAMS only, up to 95%): when the rule's `L` is under two step sizes,
   the chains run half of the stretch at `L` and half at `L/2`, and the length with more
   effective samples per gradient (the worse of the autocorrelation times of `x` and of
   `(x − x̄)²`, averaged over coordinates) is kept. Trajectories of one or two large steps can
   nearly reverse the position: that decorrelates `x` (which the rule measures) but not `x²`,
   and the bias of second moments is what the user estimates.
4. **Phase C** (the rest): step size tuning only, for the final `L` (restarted if `L` changed).

MCLMC tunes its step size so that the energy error's variance per dimension is `target`
(`5·10⁻⁴`, Robnik & Seljak 2023), with a weighted running average of `ΔE²/(d·target)/h⁶` that
down-weights outliers, and sets `L = 0.4 · h · τ` with `τ` the mean integrated autocorrelation
time (in steps). MAMS tunes its step size by dual averaging to the acceptance `target` (0.9)
and sets `L ← 0.5 · L · n/ESS` (capped at `2L`), with `ESS` the mean effective sample size of
the `n` traced steps (Robnik, Cohn-Gordon & Seljak 2025), then compares it with `L/2`. The
adaptations evaluate no gradient of their own: every gradient is a warmup step's, counted in
`num_grad_evals_warmup`.

The trace costs `rows × num_chains × d` numbers (`rows ≤ max_trace_rows`; the comparison's as
many).
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array
from ._adaptation import (
    AbstractAdaptation,
    DualAveragingState,
    WelfordState,
    WindowAdaptation,
    dual_averaging_init,
    dual_averaging_update,
    regularized_covariance,
    welford_init,
    welford_pool,
    welford_update,
)
from ._base import check_fraction, check_hyper, check_int
from ._diagnostics import _autocovariance, _geyer_tau
from ._metrics import DiagonalMetric
from ._microcanonical import MAMS, MCLMC


def integrated_autocorrelation_time(trace: Array) -> Array:
    """The integrated autocorrelation time of every coordinate of a multi-chain trace
    `(num_draws, num_chains, d)`, in draws (autocovariances averaged over chains, Geyer's
    initial positive sequence). Traceable; at least `1/num_draws`."""
    n = trace.shape[0]
    x = trace - jnp.mean(trace, axis=(0, 1))
    acov = _autocovariance(x, axis=0, xp=jnp, power_of_two=False)
    acov = jnp.mean(acov, axis=1)  # (n, d): averaged over chains
    var = acov[0]
    tau = _geyer_tau(acov / jnp.where(var > 0, var, 1.0), jnp)
    return jnp.where(var > 0, jnp.maximum(tau, 1.0 / n), 1.0)


def moments_autocorrelation_time(trace: Array) -> Array:
    """Per coordinate of a multi-chain trace `(num_draws, num_chains, d)`, the larger of the
    integrated autocorrelation times of `x` and of `(x − x̄)²` (in draws): the cost of
    estimating both the mean and the variance. A chain that flips sign every draw has a short
    time for `x` and a long one for `x²`."""
    centered = trace - jnp.mean(trace, axis=(0, 1))
    return jnp.maximum(
        integrated_autocorrelation_time(trace), integrated_autocorrelation_time(centered**2)
    )


class _Schedule(eqx.Module):
    welford_start: Array
    a_end: Array
    b_end: Array
    stride: Array
    c_end: Array  # end of the length comparison (MAMS; -1: none)
    seg_len: Array  # steps per compared length
    seg_stride: Array  # thinning of the comparison trace


class MicrocanonicalState(eqx.Module):
    """State of the microcanonical adaptations (pooled over chains: scalars and one trace)."""

    step_size: Array
    da: DualAveragingState
    num: Array
    den: Array
    max_step_size: Array
    L: Array
    welford: WelfordState
    trace: Array
    candidates: Array  # the trajectory lengths compared after phase B (MAMS)
    seg_trace: Array  # their (thinned) traces, one block of rows per candidate
    seg_grads: Array  # gradients per chain spent in each candidate's block
    schedule: _Schedule


def _flat(x):
    return x.reshape(x.shape[0], -1)


def _set_all(samplers, where, value):
    leaf = where(samplers)
    return eqx.tree_at(where, samplers, jnp.broadcast_to(value, leaf.shape).astype(leaf.dtype))


class _MicrocanonicalAdaptation(AbstractAdaptation):
    sampler_type: ClassVar[type]
    target: eqx.AbstractVar[float]
    l_factor: eqx.AbstractVar[float]
    metric: eqx.AbstractVar[Literal["diagonal"] | None]
    max_trace_rows: eqx.AbstractVar[int]
    # fractions of the warmup where phases A and B end; with a `length_ratio`, phase B is
    # followed by a comparison of `L` and `length_ratio · L` (until `comparison_end`)
    a_fraction: ClassVar[float] = 0.4
    b_fraction: ClassVar[float] = 0.75
    comparison_end: ClassVar[float] = 0.75
    length_ratio: ClassVar[float | None] = None
    max_steps_compared: ClassVar[float] = 2.0

    def __check_init__(self):
        check_fraction(self.target, "target")
        check_hyper(self.l_factor, "l_factor")
        if self.metric not in ("diagonal", None):
            raise ValueError(f"`metric` must be 'diagonal' or None, got {self.metric!r}.")
        check_int(self.max_trace_rows, "max_trace_rows", 8)

    def prepare(self, sampler, event_shape):
        if not isinstance(sampler, self.sampler_type):
            raise TypeError(
                f"`{type(self).__name__}` adapts `{self.sampler_type.__name__}` only, got "
                f"{type(sampler).__name__}."
            )
        assert isinstance(sampler, (MCLMC, MAMS))  # for the type checker: sampler_type is one
        check_hyper(sampler.L, "L")
        # the diagonal metric to adapt (identity -> ones), as the window adaptation does
        return WindowAdaptation(metric=self.metric).prepare(sampler, event_shape)

    # step size -------------------------------------------------------------------------------

    @abc.abstractmethod
    def _step_update(self, astate: MicrocanonicalState, infos, dim: int) -> MicrocanonicalState:
        """The new pooled step size after one warmup step."""

    @abc.abstractmethod
    def _new_L(self, astate: MicrocanonicalState, tau_steps: Array) -> Array:
        """`L` from the mean autocorrelation time per coordinate (in steps) of phase B."""

    def _restart(self, astate: MicrocanonicalState) -> MicrocanonicalState:
        h = astate.step_size
        return eqx.tree_at(
            lambda a: (a.da, a.num, a.den, a.max_step_size),
            astate,
            (
                dual_averaging_init(h),
                jnp.zeros_like(h),
                jnp.zeros_like(h),
                jnp.full_like(h, jnp.inf),
            ),
        )

    # the AbstractAdaptation interface --------------------------------------------------------

    def init(self, samplers: Any, states, num_warmup):
        num_chains = states.position.shape[0]
        dim = math.prod(states.position.shape[1:])
        dtype = states.position.dtype
        c_end, seg_len, seg_stride, seg_rows = -1, 1, 1, 1
        if num_warmup >= 20:
            a_end = int(self.a_fraction * num_warmup)
            b_end = int(self.b_fraction * num_warmup)
            stride = max(1, math.ceil((b_end - a_end) / self.max_trace_rows))
            rows = math.ceil((b_end - a_end) / stride)
            seg = (int(self.comparison_end * num_warmup) - b_end) // 2
            if self.length_ratio is not None and seg >= 8:
                c_end, seg_len = b_end + 2 * seg, seg
                seg_stride = max(1, math.ceil(seg / (self.max_trace_rows // 2)))
                seg_rows = math.ceil(seg / seg_stride)
        else:  # too short to estimate anything but the step size
            a_end = b_end = -1
            stride, rows = 1, 1
        schedule = _Schedule(
            welford_start=jnp.asarray(a_end // 2, jnp.int32),
            a_end=jnp.asarray(a_end, jnp.int32),
            b_end=jnp.asarray(b_end, jnp.int32),
            stride=jnp.asarray(stride, jnp.int32),
            c_end=jnp.asarray(c_end, jnp.int32),
            seg_len=jnp.asarray(seg_len, jnp.int32),
            seg_stride=jnp.asarray(seg_stride, jnp.int32),
        )
        h = samplers.step_size[0].astype(dtype)
        welford = jax.vmap(lambda _: welford_init(dim, False, dtype))(jnp.arange(num_chains))
        astate = MicrocanonicalState(
            step_size=h,
            da=dual_averaging_init(h),
            num=jnp.zeros_like(h),
            den=jnp.zeros_like(h),
            max_step_size=jnp.full_like(h, jnp.inf),
            L=samplers.L[0].astype(dtype),
            welford=welford,
            trace=jnp.zeros((rows, num_chains, dim), dtype),
            candidates=jnp.zeros((2,), dtype),
            seg_trace=jnp.zeros((2 * seg_rows, num_chains, dim), dtype),
            seg_grads=jnp.zeros((2,), dtype),
            schedule=schedule,
        )
        return astate

    def update(self, samplers: Any, astate: MicrocanonicalState, states, infos, i):
        dim = math.prod(states.position.shape[1:])
        event_shape = states.position.shape[1:]
        sch = astate.schedule
        x = _flat(states.position).astype(astate.trace.dtype)
        astate = self._step_update(astate, infos, dim)

        # phase A: Welford of the positions, and L from their spread
        in_w = (i >= sch.welford_start) & (i < sch.a_end)
        welford = jax.vmap(lambda w, xi: welford_update(w, xi, in_w.astype(xi.dtype)))(
            astate.welford, x
        )
        pooled = welford_pool(welford)
        var = regularized_covariance(pooled)
        inv_mass = _flat(samplers.metric.inverse_mass)[0] if self.metric else 1.0
        radius = jnp.sqrt(jnp.sum(var / inv_mass))
        enough = in_w & (pooled.count > 2 * x.shape[0])
        L = jnp.where(enough & jnp.isfinite(radius), radius, astate.L)
        astate = eqx.tree_at(lambda a: (a.welford, a.L), astate, (welford, L))

        # end of phase A: the diagonal metric from the pooled variance
        def set_metric(samplers, astate):
            if self.metric is not None:
                dtype = samplers.metric.inverse_mass.dtype
                metric = jax.vmap(lambda _: DiagonalMetric(var.reshape(event_shape).astype(dtype)))(
                    jnp.arange(x.shape[0])
                )
                samplers = eqx.tree_at(lambda s: s.metric, samplers, metric)
                L = jnp.sqrt(jnp.asarray(dim, astate.L.dtype))  # the whitened radius
            else:
                L = astate.L
            astate = self._restart(eqx.tree_at(lambda a: a.L, astate, L))
            return samplers, astate

        samplers, astate = jax.lax.cond(
            i == sch.a_end - 1, set_metric, lambda s, a: (s, a), samplers, astate
        )

        # phase B: a thinned trace of every chain
        k = i - sch.a_end
        write = (k >= 0) & (i < sch.b_end) & (k % sch.stride == 0)
        rows = astate.trace.shape[0]
        slot = jnp.where(write, k // sch.stride, rows)
        trace = astate.trace.at[slot].set(x, mode="drop")
        astate = eqx.tree_at(lambda a: a.trace, astate, trace)

        # end of phase B: L from the autocorrelation of the trace
        def set_length(astate):
            tau = integrated_autocorrelation_time(astate.trace)
            tau_steps = tau * sch.stride.astype(tau.dtype)
            L = self._new_L(astate, tau_steps)
            L = jnp.where(jnp.isfinite(L), jnp.maximum(L, 0.5 * astate.step_size), astate.L)
            return self._restart(eqx.tree_at(lambda a: a.L, astate, L))

        astate = jax.lax.cond(i == sch.b_end - 1, set_length, lambda a: a, astate)
        if self.length_ratio is not None:
            astate = self._compare_lengths(astate, x, infos, i)
        samplers = _set_all(samplers, lambda s: s.step_size, astate.step_size)
        samplers = _set_all(samplers, lambda s: s.L, astate.L)
        return samplers, astate

    def _compare_lengths(self, astate: MicrocanonicalState, x, infos, i):
        """After phase B: `seg_len` steps at the rule's `L`, then `seg_len` at
        `length_ratio · L`; the one with more effective samples per gradient (the worse of the
        first and second moments, averaged over coordinates) is kept."""
        sch = astate.schedule
        k = i - sch.b_end
        in_c = (k >= 0) & (i < sch.c_end)
        seg = jnp.clip(k // sch.seg_len, 0, 1)
        j = k - seg * sch.seg_len
        half = astate.seg_trace.shape[0] // 2
        write = in_c & (j % sch.seg_stride == 0)
        slot = jnp.where(write, seg * half + j // sch.seg_stride, 2 * half)
        grads = jnp.mean(infos.num_grad_evals.astype(astate.seg_grads.dtype))
        astate = eqx.tree_at(
            lambda a: (a.seg_trace, a.seg_grads),
            astate,
            (
                astate.seg_trace.at[slot].set(x, mode="drop"),
                astate.seg_grads.at[seg].add(jnp.where(in_c, grads, 0.0)),
            ),
        )

        def start(astate):  # the lengths to compare: the rule's and a shorter one
            L, h = astate.L, astate.step_size
            # only for trajectories of a few (large) steps: two steps can then nearly reverse
            # the position, which leaves x² unchanged (the rule, on x, does not see it)
            short = L < self.max_steps_compared * h
            other = jnp.where(short, jnp.maximum(self.length_ratio * L, 0.5 * h), L)
            return eqx.tree_at(lambda a: a.candidates, astate, jnp.stack([L, other]))

        def second(astate):
            return eqx.tree_at(lambda a: a.L, astate, astate.candidates[1])

        def choose(astate):
            def ess_per_grad(block, grads):
                stride = sch.seg_stride.astype(block.dtype)
                tau = moments_autocorrelation_time(block)
                steps = sch.seg_len.astype(block.dtype)
                return steps / (stride * jnp.mean(tau) * grads)

            e = [
                ess_per_grad(astate.seg_trace[b * half : (b + 1) * half], astate.seg_grads[b])
                for b in (0, 1)
            ]
            better = jnp.isfinite(e[1]) & (e[1] > e[0])
            L = jnp.where(better, astate.candidates[1], astate.candidates[0])
            astate = eqx.tree_at(lambda a: a.L, astate, L)
            # the step size adapts afresh only if `L` changed
            changed = astate.candidates[1] != astate.candidates[0]
            return jax.tree.map(
                lambda a, b: jnp.where(changed, a, b), self._restart(astate), astate
            )

        astate = jax.lax.cond(i == sch.b_end - 1, start, lambda a: a, astate)
        astate = jax.lax.cond(i == sch.b_end + sch.seg_len - 1, second, lambda a: a, astate)
        return jax.lax.cond(i == sch.c_end - 1, choose, lambda a: a, astate)

    def finalize(self, samplers, astate: MicrocanonicalState):
        samplers = _set_all(samplers, lambda s: s.step_size, self._final_step_size(astate))
        return _set_all(samplers, lambda s: s.L, astate.L)

    def _final_step_size(self, astate: MicrocanonicalState) -> Array:
        return astate.step_size


class MCLMCAdaptation(_MicrocanonicalAdaptation):
    """The warmup of [`MCLMC`][] (Robnik & Seljak 2023), pooled over chains.

    Step size: the energy error's variance per dimension is brought to `target` with a
    weighted running average (over about `num_effective_samples` steps) of the step sizes each
    step's `ΔE²` implies (`Var[ΔE] ∝ h⁶`); a divergent step caps the step size at 0.8 times
    its value. `L`: the whitened radius of the draws, then `L = l_factor · h · τ` with `τ` the
    mean integrated autocorrelation time in steps. Metric: the pooled diagonal variance
    (`metric="diagonal"`, default) or kept (`None`). See the module docstring for the schedule.

    **Arguments:** `target` (in (0, 1), default `5e-4`), `l_factor` (0.4),
    `num_effective_samples` (150), `metric`, `max_trace_rows` (128).
    """

    target: float = 5e-4
    l_factor: float = 0.4
    num_effective_samples: int = 150
    metric: Literal["diagonal"] | None = "diagonal"
    max_trace_rows: int = 128

    sampler_type: ClassVar[type] = MCLMC

    def __check_init__(self):
        check_int(self.num_effective_samples, "num_effective_samples", 1)

    def _step_update(self, astate, infos, dim):
        h = astate.step_size
        e = infos.energy_error.astype(h.dtype)
        ok = jnp.isfinite(e) & ~infos.is_divergent
        xi = jnp.where(ok, e**2 / (dim * self.target), 1.0) + 1e-8
        w = jnp.where(ok, jnp.exp(-0.5 * (jnp.log(xi) / (6.0 * 1.5)) ** 2), 0.0)
        n = self.num_effective_samples
        decay = (n - 1.0) / (n + 1.0)
        # in units of the current step size, so that h⁶ never over- or underflows
        num = decay * astate.num + jnp.sum(w * xi)
        den = decay * astate.den + jnp.sum(w)
        estimate = h * jnp.where(den > 0, (num / jnp.where(den > 0, den, 1.0)), 1.0) ** (-1 / 6)
        cap = jnp.where(jnp.all(ok), astate.max_step_size, 0.8 * h)
        new_h = jnp.minimum(jnp.where(jnp.isfinite(estimate), estimate, h), cap)
        new_h = jnp.clip(new_h, 1e-3 * h, 1e3 * h)
        # the running sums are kept in units of the NEW step size: ξ scales like h⁶
        scale = (new_h / h) ** 6
        return eqx.tree_at(
            lambda a: (a.step_size, a.num, a.den, a.max_step_size),
            astate,
            (new_h, num * scale, den, cap),
        )

    def _new_L(self, astate, tau_steps):
        return self.l_factor * astate.step_size * jnp.mean(tau_steps)


class MAMSAdaptation(_MicrocanonicalAdaptation):
    """The warmup of [`MAMS`][] (Robnik, Cohn-Gordon & Seljak 2025), pooled over chains.

    Step size: dual averaging of the chains' mean acceptance to `target` (default 0.9),
    restarted whenever the metric or `L` changes; the averaged iterate is used after warmup.
    `L`: the whitened radius of the draws, then `L ← l_factor · L · n/ESS` (at most `2L`) from
    the mean effective sample size of a trace of `n` steps; if that `L` is under two step
    sizes, a stretch of the warmup at `L` and one at `L/2` decide between them by effective
    samples per gradient of the first and second moments. Metric: the pooled diagonal variance
    (`metric="diagonal"`, default; the hook for other metric adaptations) or kept (`None`).
    See the module docstring for the schedule.

    **Arguments:** `target` (acceptance in (0, 1)), `l_factor` (0.5), `metric`,
    `max_trace_rows` (128).
    """

    target: float = 0.9
    l_factor: float = 0.5
    metric: Literal["diagonal"] | None = "diagonal"
    max_trace_rows: int = 128

    sampler_type: ClassVar[type] = MAMS
    comparison_end: ClassVar[float] = 0.95
    length_ratio: ClassVar[float | None] = 0.5

    def _step_update(self, astate, infos, dim):
        acc = jnp.where(jnp.isfinite(infos.acceptance_rate), infos.acceptance_rate, 0.0)
        da = dual_averaging_update(astate.da, self.target - jnp.mean(acc))
        h = jnp.exp(da.log_step).astype(astate.step_size.dtype)
        return eqx.tree_at(lambda a: (a.da, a.step_size), astate, (da, h))

    def _new_L(self, astate, tau_steps):
        ess_per_step = jnp.mean(1.0 / tau_steps)
        return jnp.minimum(self.l_factor * astate.L / ess_per_step, 2.0 * astate.L)

    def _final_step_size(self, astate):
        return jnp.exp(astate.da.log_step_avg).astype(astate.step_size.dtype)


def microcanonical_adaptation(sampler) -> AbstractAdaptation | None:
    """The default adaptation of a microcanonical sampler (`None` for any other sampler)."""
    if isinstance(sampler, MCLMC):
        return MCLMCAdaptation()
    if isinstance(sampler, MAMS):
        return MAMSAdaptation()
    return None
