"""Sequential Monte Carlo samplers along a geometric annealing path, and annealed importance
sampling (AIS) as the special case without resampling.

One SMC stage moves the particles from `π_β ∝ p_ref^{1-β} p^β` to `π_β'` (`β' > β`):

1. choose `β'` (the next entry of a fixed schedule, or by bisection so that the conditional
   ESS of the incremental weights hits `target_ess`);
2. reweight: `log w += (β' - β)(log p(x) - log p_ref(x))`, and accumulate
   `log Z += log Σ_i W_i exp((β' - β)(log p - log p_ref)(x_i))`;
3. resample (multinomial / stratified / systematic) when the ESS falls below
   `resampling_threshold · num_particles`;
4. move: `num_mcmc_steps` steps of any driftax kernel targeting `π_β'`, whose step size is
   adapted across the particle population (and optionally its diagonal metric set to the
   particles' variance).

The loop over stages is a `lax.while_loop`, the whole run ONE `eqx.filter_jit`-compiled call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Key, Point, Scalar, Shape
from ..energies._base import (
    AbstractEnergy,
    AbstractKnownNormalizer,
    AbstractSampleable,
    check_sample_shape,
)
from ..energies._compose import GeometricPath
from ..energies._metrics_logz import LogZEstimate, log_z_importance
from ._adaptation import WindowAdaptation, step_size_statistic
from ._base import AbstractSampler, check_hyper, float_leaf
from ._resampling import RESAMPLING_SCHEMES, resample
from ._transport import AbstractTransport

_LOG_2PI = math.log(2.0 * math.pi)


class _IsotropicGaussian(AbstractSampleable, AbstractKnownNormalizer):
    """`N(0, scale² I)` on any event shape: the default SMC reference."""

    scale: Array
    event_shape: Shape = eqx.field(static=True)

    def log_density(self, x: Point) -> Scalar:
        return -0.5 * jnp.sum((x / self.scale) ** 2)

    def sample(self, key: Key, shape=()) -> Array:
        shape = check_sample_shape(shape)
        eps = jax.random.normal(key, (*shape, *self.event_shape), jnp.result_type(float))
        return self.scale * eps

    @property
    def log_normalizer(self) -> Scalar:
        d = math.prod(self.event_shape)
        return 0.5 * d * _LOG_2PI + d * jnp.log(self.scale)


def _as_schedule(schedule):
    if schedule is None or isinstance(schedule, jax.core.Tracer):
        return schedule
    return jnp.asarray(schedule, dtype=jnp.result_type(float))


def check_schedule(schedule) -> None:
    """Eagerly check an annealing schedule: 1-D, at least two entries, starting at 0, ending
    at 1, strictly increasing. Raises a `ValueError` naming `schedule`."""
    if isinstance(schedule, jax.core.Tracer):
        return
    s = np.asarray(schedule, dtype=float)
    if s.ndim != 1 or s.shape[0] < 2:
        raise ValueError(
            f"`schedule` must be a 1-D array of at least 2 inverse temperatures, got shape {s.shape}."
        )
    if not np.all(np.isfinite(s)):
        raise ValueError("`schedule` must be finite.")
    if s[0] != 0.0:
        raise ValueError(f"`schedule` must start at 0 (the reference), got {s[0]!r}.")
    if s[-1] != 1.0:
        raise ValueError(f"`schedule` must end at 1 (the target), got {s[-1]!r}.")
    if np.any(np.diff(s) <= 0):
        bad = int(np.flatnonzero(np.diff(s) <= 0)[0])
        raise ValueError(
            f"`schedule` must be strictly increasing; entry {bad + 1} ({s[bad + 1]!r}) does not "
            f"exceed entry {bad} ({s[bad]!r})."
        )


def _check_fraction(value, name, *, closed_low=False, closed_high=True):
    if isinstance(value, jax.core.Tracer):
        return
    lo = "[0" if closed_low else "(0"
    hi = "1]" if closed_high else "1)"
    msg = f"`{name}` must be a number in {lo}, {hi}, got {value!r}."
    if isinstance(value, (bool, str)) or value is None or np.ndim(value) != 0:
        raise ValueError(msg)
    v = float(value)
    ok_low = v >= 0 if closed_low else v > 0
    ok_high = v <= 1 if closed_high else v < 1
    if not (ok_low and ok_high):
        raise ValueError(msg)


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return int(value)


class SMC(eqx.Module):
    """Sequential Monte Carlo from a normalized reference to the target along the geometric
    path `π_β ∝ p_ref^{1-β} · exp(log_density)^β`; estimates `log Z` and returns weighted
    particles. With `resampling="never"` it is annealed importance sampling (see [`AIS`][]).

    **Arguments:**

    - `kernel`: any driftax `AbstractSampler` (`RandomWalk`, `MALA`, `HMC`, `NUTS`, ...): the
      move applied to every particle at every stage. Unadjusted kernels (`ULA`) bias `log Z`.
    - `schedule`: a fixed increasing array of inverse temperatures from 0 to 1, or `None`
      (default) for ESS-adaptive tempering: each next `β` is found by bisection so that the
      conditional ESS (Zhou, Johansen & Aston 2016) of the incremental weights is
      `target_ess · num_particles`.
    - `num_mcmc_steps`: kernel steps per stage (default 5).
    - `target_ess`: the conditional-ESS fraction adaptive tempering aims at (default 0.5).
    - `max_stages`: the most stages adaptive tempering may take (default 1000); if it has not
      reached `β = 1` by then, the last stage jumps to 1 and `truncated` is reported.
    - `resampling`: `"multinomial"` (default: the single-run error estimate is derived for
      it, and on many_well(32) it measured no worse than systematic), `"systematic"`,
      `"stratified"` or `"never"`.
    - `resampling_threshold`: resample when the ESS falls below this fraction of the particles
      (default 0.5; 1 resamples at every stage).
    - `reference`: the `β = 0` distribution: an energy with exact `sample` and known
      `log_normalizer` (a `gaussian`, a trained flow, ...). Default `N(0, reference_scale² I)`.
    - `reference_scale`: the scale of the default reference (default 3: wide; a reference
      close to the target needs far fewer stages).
    - `adapt_step_size`: adapt the kernel's `step_size` across the particle population after
      every move: `h ← h · exp(-(target - mean acceptance))` (the statistic of
      `driftax.samplers` step-size adaptation, so unadjusted kernels use their energy error).
    - `target_acceptance`: the acceptance aimed at (default: the kernel's own).
    - `adapt_metric`: at every stage set the kernel's diagonal metric (inverse mass) to the
      weighted variance of the particles (kernels with a `metric` field).
    - `transport`: an optional [`AbstractTransport`][]: a map fitted to the particles at every
      stage and applied before the reweighting (annealed flow transport with
      `driftax.flows.FlowTransport`). Default `None`: geometric annealing leaves the particles
      in place.

    **Outputs** (an [`SMCResult`][]): particles and normalized log-weights, `log_z` and its
    single-run standard error, per-stage ESS, acceptance, step size, schedule, resampling
    flags, and the number of target evaluations.

    **Annealed flow transport** (Arbel, Matthews & Doucet 2021): with `transport=`, the particles
    are pushed through a map `T_k` fitted at every stage before the reweighting, with the
    incremental weight `π_k(T(x)) |det ∇T(x)| / π_{k-1}(x)` (formed in `_transport_and_reweight`,
    the only place that forms incremental weights).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    target = dx.energies.gaussian(jnp.ones(2), 0.5)
    smc = dx.samplers.SMC(dx.samplers.MALA(step_size=0.1), reference_scale=1.0)
    result = smc.run(target, key=jax.random.key(0), num_particles=256)
    result.log_z, result.log_z_stderr  # log Z = 0 for a normalized target
    ```
    """

    kernel: AbstractSampler
    schedule: Array | None = eqx.field(default=None, converter=_as_schedule)
    num_mcmc_steps: int = eqx.field(static=True, default=5)
    target_ess: Array = eqx.field(converter=float_leaf, default=0.5)
    max_stages: int = eqx.field(static=True, default=1000)
    resampling: str = eqx.field(static=True, default="multinomial")
    resampling_threshold: Array = eqx.field(converter=float_leaf, default=0.5)
    reference: AbstractEnergy | None = None
    reference_scale: Array = eqx.field(converter=float_leaf, default=3.0)
    adapt_step_size: bool = eqx.field(static=True, default=True)
    target_acceptance: float | None = eqx.field(static=True, default=None)
    adapt_metric: bool = eqx.field(static=True, default=False)
    transport: AbstractTransport | None = None

    def __check_init__(self):
        if not isinstance(self.kernel, AbstractSampler):
            raise TypeError(
                f"`kernel` must be a driftax AbstractSampler, got {type(self.kernel).__name__}."
            )
        if self.schedule is not None:
            check_schedule(self.schedule)
        _positive_int(self.num_mcmc_steps, "num_mcmc_steps")
        _positive_int(self.max_stages, "max_stages")
        _check_fraction(self.target_ess, "target_ess", closed_high=False)
        _check_fraction(self.resampling_threshold, "resampling_threshold")
        if self.resampling not in (*RESAMPLING_SCHEMES, "never"):
            raise ValueError(
                f"`resampling` must be one of {(*RESAMPLING_SCHEMES, 'never')}, "
                f"got {self.resampling!r}."
            )
        if self.reference is not None and not (
            isinstance(self.reference, AbstractSampleable)
            and isinstance(self.reference, AbstractKnownNormalizer)
        ):
            raise TypeError(
                "`reference` must be an energy with exact `sample` and a known `log_normalizer` "
                f"(AbstractSampleable and AbstractKnownNormalizer), got "
                f"{type(self.reference).__name__}."
            )
        check_hyper(self.reference_scale, "reference_scale")
        if self.target_acceptance is not None:
            _check_fraction(self.target_acceptance, "target_acceptance", closed_high=False)
        if self.adapt_step_size and not hasattr(self.kernel, "step_size"):
            raise ValueError(
                f"`adapt_step_size=True` needs a kernel with a `step_size`; "
                f"{type(self.kernel).__name__} has none (pass adapt_step_size=False)."
            )
        if self.transport is not None and not isinstance(self.transport, AbstractTransport):
            raise TypeError(
                "`transport` must be an AbstractTransport (e.g. driftax.flows.FlowTransport), "
                f"got {type(self.transport).__name__}."
            )
        if self.adapt_metric and not hasattr(self.kernel, "metric"):
            raise ValueError(
                f"`adapt_metric=True` needs a kernel with a `metric`; "
                f"{type(self.kernel).__name__} has none."
            )

    def reference_for(self, energy: AbstractEnergy) -> AbstractEnergy:
        """The `β = 0` reference used for `energy` (the given one, or the default Gaussian)."""
        if self.reference is not None:
            return self.reference
        return _IsotropicGaussian(scale=self.reference_scale, event_shape=tuple(energy.event_shape))

    def run(
        self,
        energy: AbstractEnergy,
        *,
        key: Key,
        num_particles: int,
        num_runs: int | None = None,
    ) -> SMCResult:
        """Run the sampler on `energy`, compiled once (a second call with the same shapes and
        settings reuses the compiled loop).

        **Arguments:**

        - `energy`: the target, an `AbstractEnergy`.
        - `key`: a JAX PRNG key (same key → identical results).
        - `num_particles`: particles per run (at least 2).
        - `num_runs`: `None` (default) for one run, or a number of independent runs executed
          together (vmapped); every field of the result then has a leading run axis and
          `log_z_estimate` combines the runs.

        **Returns:** an [`SMCResult`][].
        """
        if not isinstance(energy, AbstractEnergy):
            raise TypeError(
                f"`energy` must be a driftax AbstractEnergy, got {type(energy).__name__}."
            )
        num_particles = _positive_int(num_particles, "num_particles")
        if num_particles < 2:
            raise ValueError(f"`num_particles` must be at least 2, got {num_particles}.")
        if num_runs is not None:
            num_runs = _positive_int(num_runs, "num_runs")
        reference = self.reference_for(energy)
        if tuple(reference.event_shape) != tuple(energy.event_shape):
            raise ValueError(
                f"`reference` has event shape {tuple(reference.event_shape)}, the energy "
                f"{tuple(energy.event_shape)}."
            )
        smc = self
        if self.adapt_metric:
            kernel = WindowAdaptation(metric="diagonal").prepare(self.kernel, energy.event_shape)
            smc = eqx.tree_at(lambda s: s.kernel, self, kernel)
        out = _run(smc, energy, reference, key, num_particles, num_runs or 0)
        return _result(out, num_particles, num_runs)


def AIS(kernel: AbstractSampler, schedule=None, **kwargs) -> SMC:
    """Annealed importance sampling (Neal 2001): [`SMC`][] with `resampling="never"`.

    Each particle is an independent annealing trajectory; its weight is the product of the
    incremental weights, `log Ẑ = log mean exp(log w)`. Takes the same arguments as `SMC`
    (a fixed `schedule`, or `None` for conditional-ESS-adaptive tempering).
    """
    if "resampling" in kwargs:
        raise TypeError("`AIS` never resamples; use `SMC` to choose a resampling scheme.")
    return SMC(kernel=kernel, schedule=schedule, resampling="never", **kwargs)


# ---------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------


@dataclass
class SMCResult:
    """What [`SMC.run`][] returns (with `num_runs`, every field has a leading run axis and the
    per-stage arrays are padded with NaN / False past each run's `num_stages`).

    - `particles`: `(num_particles, *event_shape)`; `log_weights`: their normalized
      log-weights (uniform right after a resampling; use them for estimates).
    - `log_z`: the SMC estimate of `log Z` (`Ẑ` is unbiased; `log Ẑ` is biased low by about
      half its variance).
    - `log_z_stderr`: the single-run standard error of `log_z`: the square root of the
      Lee & Whiteley (2018) estimate of the relative variance of `Ẑ`,
      `1 - (n/(n-1))^m (1 - Σ_k S_k²)`, with `S_k` the total final weight of the particles
      descending from initial particle `k` and `m` = 1 + the number of resampling events
      (derived for multinomial resampling; an approximation for the other schemes; 0 when it
      comes out negative; unreliable once all particles descend from few initial ones). For
      AIS it reduces to the importance-sampling delta-method error.
    - per stage (`(num_stages,)`): `ess` (effective sample size after reweighting, before
      resampling — weight degeneracy is reported, not hidden), `resampled`,
      `acceptance_rate` (mean over particles and moves), `step_size` (after the stage's
      adaptation), `log_z_increments`, `transport_loss` (the final loss of each stage's
      transport fit; NaN without a transport); `betas`: `(num_stages + 1,)` from 0 to 1.
    - `num_stages`, `num_resampling`; `truncated`: the adaptive schedule hit `max_stages` and
      jumped to `β = 1`.
    - `num_grad_evals`: gradients of the target evaluated (all particles, all stages; with a
      transport also the training population and the maps' fits);
      `num_energy_evals`: target log-density evaluations, with or without gradient;
      `num_divergent`: divergent moves.
    """

    particles: Array
    log_weights: Array
    log_z: Array
    log_z_stderr: Array
    betas: np.ndarray
    ess: np.ndarray
    resampled: np.ndarray
    acceptance_rate: np.ndarray
    step_size: np.ndarray
    log_z_increments: np.ndarray
    transport_loss: np.ndarray
    num_stages: np.ndarray
    num_resampling: np.ndarray
    truncated: np.ndarray
    num_grad_evals: np.ndarray
    num_energy_evals: np.ndarray
    num_divergent: np.ndarray
    num_runs: int | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def log_z_estimate(self) -> LogZEstimate:
        """`log Z` with its standard error: for one run, `(log_z, log_z_stderr)`; for several
        runs, `log` of the mean of the runs' `Ẑ` with the delta-method error from their spread
        (`driftax.energies.log_z_importance` applied to the runs' `log_z`)."""
        if self.num_runs is None:
            return LogZEstimate(value=self.log_z, stderr=self.log_z_stderr)
        return log_z_importance(self.log_z)


# ---------------------------------------------------------------------------------------------
# The compiled core
# ---------------------------------------------------------------------------------------------


def _nan_to_neg_inf(a):
    return jnp.where(jnp.isnan(a), -jnp.inf, a)


def _log_normalize(logw):
    lse = jax.nn.logsumexp(logw)
    return logw - lse, lse


def _ess(logw_normalized):
    return jnp.exp(-jax.nn.logsumexp(2.0 * logw_normalized))


def _conditional_ess_fraction(logw, diff, delta):
    """CESS / n = (Σ W w)² / Σ W w² for incremental log-weights `delta · diff`."""
    inc = _nan_to_neg_inf(delta * diff)
    return jnp.exp(2.0 * jax.nn.logsumexp(logw + inc) - jax.nn.logsumexp(logw + 2.0 * inc))


def _next_beta(logw, diff, beta, target_ess, num_bisection=60):
    """The largest `β' ∈ (β, 1]` whose conditional ESS is at least `target_ess` (bisection)."""
    remaining = 1.0 - beta
    reach_one = _conditional_ess_fraction(logw, diff, remaining) >= target_ess

    def body(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        ok = _conditional_ess_fraction(logw, diff, mid) >= target_ess
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, num_bisection, body, (jnp.zeros_like(beta), remaining))
    # always make progress (a degenerate population would otherwise stall)
    delta = jnp.maximum(lo, jnp.asarray(1e-7, beta.dtype) * remaining + 1e-12)
    return jnp.where(reach_one, 1.0, jnp.minimum(beta + delta, 1.0))


def _transport_and_reweight(smc, path, key, stage, beta, beta_new, x, logw, l_ref, l_target, n):
    """The stage's incremental log-weights and particles.

    Geometric annealing leaves the particles in place: `log w_inc = (β' - β)(log p(x) -
    log p_ref(x))`. With a transport `T`: `x ← T(x)`, `log w_inc = log π_β'(T(x)) +
    log|det ∇T(x)| - log π_β(x)`, where `T` is fitted on the training population (particles
    `n:`) only and applied to all. Returns `(x, inc, loss)`.
    """
    if smc.transport is None:
        inc = _nan_to_neg_inf((beta_new - beta) * (l_target - l_ref))
        return x, inc, jnp.asarray(jnp.nan, l_ref.dtype)
    next_density = path.at(beta_new).log_density
    train_logw, _ = _log_normalize(logw[n:])
    y, log_det, loss = smc.transport.fit_and_transport(
        key, x[n:], train_logw, next_density, x, stage
    )
    y = jax.lax.stop_gradient(y).astype(x.dtype)
    ly_ref = jax.vmap(path.initial.log_density)(y).astype(l_ref.dtype)
    ly_target = jax.vmap(path.final.log_density)(y).astype(l_ref.dtype)
    log_next = (1.0 - beta_new) * ly_ref + beta_new * ly_target
    log_prev = (1.0 - beta) * l_ref + beta * l_target
    inc = _nan_to_neg_inf(log_next + log_det.astype(l_ref.dtype) - log_prev)
    return y, inc, jnp.asarray(loss, l_ref.dtype)


def _weighted_variance(x, logw):
    w = jnp.exp(logw)
    flat = x.reshape(x.shape[0], -1)
    mean = jnp.sum(w[:, None] * flat, axis=0)
    var = jnp.sum(w[:, None] * (flat - mean) ** 2, axis=0)
    ok = jnp.isfinite(var) & (var > 0)
    return jnp.where(ok, var, 1.0) + 1e-10


def _smc_single(smc: SMC, energy, reference, key, num_particles: int):
    n = num_particles
    # With a transport, a second, independent population of `n` training particles runs
    # alongside (particles `n:`): the maps are fitted on it only, so the estimating population
    # (particles `:n`) is moved by maps independent of itself and `Ẑ` stays unbiased.
    pops = 1 if smc.transport is None else 2
    kernel = smc.kernel
    event_shape = tuple(energy.event_shape)
    dim = math.prod(event_shape)
    fixed = smc.schedule is not None
    num_stages_max = smc.schedule.shape[0] - 1 if fixed else smc.max_stages
    adapt = smc.adapt_step_size
    target_acc = smc.target_acceptance
    if target_acc is None:
        target_acc = kernel.default_target_acceptance if kernel.is_adjusted else 5e-4
    path = GeometricPath(reference, energy, 0.0)
    log_ref = jax.vmap(reference.log_density)
    log_target = jax.vmap(energy.log_density)

    k_init, k_loop = jax.random.split(key)
    x = reference.sample(k_init, (pops * n,))
    dtype = x.dtype
    logw = jnp.full((pops * n,), -jnp.log(n), dtype)
    state_shape = eqx.filter_eval_shape(kernel.init, path, x[0])
    kernel_uses_grad = getattr(state_shape, "score", None) is not None
    # kinetic kernels keep their momentum from stage to stage (re-initialized states start at
    # rest, which would leave the momentum out of equilibrium after a few moves)
    has_momentum = getattr(state_shape, "momentum", None) is not None

    def buffer(fill, dt):
        return jnp.full((num_stages_max,), fill, dt)

    carry = dict(
        x=x,
        l_ref=log_ref(x).astype(dtype),
        l_target=log_target(x).astype(dtype),
        logw=logw,
        eve=jnp.arange(pops * n, dtype=jnp.int32),
        momentum=jnp.zeros_like(x) if has_momentum else None,
        beta=jnp.zeros((), dtype),
        log_z=jnp.asarray(reference.log_normalizer, dtype),
        stage=jnp.zeros((), jnp.int32),
        kernel=kernel,
        num_resampling=jnp.zeros((), jnp.int32),
        grads=jnp.zeros((), jnp.int32),
        evals=jnp.asarray(pops * n, jnp.int32),
        divergent=jnp.zeros((), jnp.int32),
        truncated=jnp.zeros((), bool),
        betas=buffer(jnp.nan, dtype),
        ess=buffer(jnp.nan, dtype),
        resampled=buffer(False, bool),
        acceptance=buffer(jnp.nan, dtype),
        step_size=buffer(jnp.nan, dtype),
        log_z_inc=buffer(jnp.nan, dtype),
        transport_loss=buffer(jnp.nan, dtype),
    )

    def cond(c):
        return (c["beta"] < 1.0) & (c["stage"] < num_stages_max)

    def body(c):
        c = dict(c)
        s = c["stage"]
        k_stage = jax.random.fold_in(k_loop, s)
        k_res, k_move, k_transport = jax.random.split(k_stage, 3)
        beta = c["beta"]
        diff = _nan_to_neg_inf(c["l_target"] - c["l_ref"])
        # 1. the next inverse temperature
        if fixed:
            beta_new = smc.schedule[s + 1].astype(dtype)
        else:
            beta_new = _next_beta(c["logw"][:n], diff[:n], beta, smc.target_ess).astype(dtype)
            last = s == num_stages_max - 1
            c["truncated"] = last & (beta_new < 1.0)
            beta_new = jnp.where(last, jnp.asarray(1.0, dtype), beta_new)
        # 2. reweight
        x, inc, loss = _transport_and_reweight(
            smc,
            path,
            k_transport,
            s,
            beta,
            beta_new,
            c["x"],
            c["logw"],
            c["l_ref"],
            c["l_target"],
            n,
        )
        logw, log_z_incs = jax.vmap(_log_normalize)((c["logw"] + inc).reshape(pops, n))
        log_z_inc = log_z_incs[0]
        ess_pops = jax.vmap(_ess)(logw)
        ess = ess_pops[0]
        # 3. resample
        if smc.resampling == "never":
            do = jnp.asarray(False)
            eve, momentum = c["eve"], c["momentum"]
            logw = logw.reshape(-1)
        else:
            do_pops = ess_pops < smc.resampling_threshold * n
            do = do_pops[0]
            idx = jax.vmap(lambda lw, k: resample(lw, key=k, scheme=smc.resampling))(
                logw, jax.random.split(k_res, pops)
            )
            idx = jnp.where(do_pops[:, None], idx, jnp.arange(n, dtype=idx.dtype))
            idx = (idx + n * jnp.arange(pops, dtype=idx.dtype)[:, None]).reshape(-1)
            x, eve = x[idx], c["eve"][idx]
            momentum = None if c["momentum"] is None else c["momentum"][idx]
            logw = jnp.where(do_pops[:, None], jnp.full_like(logw, -jnp.log(n)), logw)
            logw = logw.reshape(-1)
        # 4. move
        kernel = c["kernel"]
        if smc.adapt_metric:
            var = _weighted_variance(x[:n], logw[:n]).astype(kernel.metric.inverse_mass.dtype)
            kernel = eqx.tree_at(lambda k: k.metric.inverse_mass, kernel, var.reshape(event_shape))
        target_b = path.at(beta_new)
        states = jax.vmap(lambda xi: kernel.init(target_b, xi))(x)
        if has_momentum:
            states = eqx.tree_at(lambda st: st.momentum, states, momentum.astype(x.dtype))

        def move(mc, k):
            kern, st = mc
            st, infos = jax.vmap(lambda si, ki: kern.step(target_b, si, key=ki))(
                st, jax.random.split(k, pops * n)
            )
            if adapt:
                stat = step_size_statistic(kern, infos, target_acc, dim, pooled=True)[0]
                stat = jnp.clip(jnp.where(jnp.isfinite(stat), stat, 1.0), -1.0, 1.0)
                h = jnp.clip(kern.step_size * jnp.exp(-stat), 1e-12, 1e12)
                kern = eqx.tree_at(lambda kk: kk.step_size, kern, h.astype(kern.step_size.dtype))
            acc = jnp.mean(jnp.where(jnp.isfinite(infos.acceptance_rate), infos.acceptance_rate, 0))
            grads = jnp.sum(infos.num_grad_evals)
            evals = jnp.sum(jnp.maximum(infos.num_grad_evals, 1))
            return (kern, st), (acc, grads, evals, jnp.sum(infos.is_divergent))

        (kernel, states), (acc, grads, evals, divs) = jax.lax.scan(
            move, (kernel, states), jax.random.split(k_move, smc.num_mcmc_steps)
        )
        x = states.position
        c["x"] = x
        c["l_ref"] = log_ref(x).astype(dtype)
        c["l_target"] = log_target(x).astype(dtype)
        c["logw"] = logw
        c["eve"] = eve
        if has_momentum:
            c["momentum"] = states.momentum
        c["beta"] = beta_new
        c["log_z"] = c["log_z"] + log_z_inc
        c["stage"] = s + 1
        c["kernel"] = kernel
        c["num_resampling"] = c["num_resampling"] + do.astype(jnp.int32)
        init_grads = pops * n if kernel_uses_grad else 0
        if smc.transport is not None:  # fitting the stage's map evaluates the target too
            init_grads = init_grads + smc.transport.num_grad_evals(n)
        c["grads"] = c["grads"] + (jnp.sum(grads) + init_grads).astype(jnp.int32)
        # + the kernel init and the new log densities
        c["evals"] = c["evals"] + (jnp.sum(evals) + 2 * pops * n).astype(jnp.int32)
        c["divergent"] = c["divergent"] + jnp.sum(divs).astype(jnp.int32)
        c["betas"] = c["betas"].at[s].set(beta_new)
        c["ess"] = c["ess"].at[s].set(ess)
        c["resampled"] = c["resampled"].at[s].set(do)
        c["acceptance"] = c["acceptance"].at[s].set(jnp.mean(acc).astype(dtype))
        step = kernel.step_size if hasattr(kernel, "step_size") else jnp.nan
        c["step_size"] = c["step_size"].at[s].set(jnp.asarray(step, dtype))
        c["log_z_inc"] = c["log_z_inc"].at[s].set(log_z_inc)
        c["transport_loss"] = c["transport_loss"].at[s].set(loss)
        return c

    c = jax.lax.while_loop(cond, body, carry)
    # Lee & Whiteley (2018) relative-variance estimate from the Eve (initial-ancestor) indices
    w = jnp.exp(c["logw"][:n])
    eve_mass = jnp.zeros((n,), dtype).at[c["eve"][:n]].add(w)
    m = 1 + c["num_resampling"]
    factor = jnp.exp(m.astype(dtype) * (jnp.log(n) - jnp.log(n - 1.0)))
    rel_var = 1.0 - factor * (1.0 - jnp.sum(eve_mass**2))
    return dict(
        particles=c["x"][:n],
        log_weights=c["logw"][:n],
        log_z=c["log_z"],
        log_z_stderr=jnp.sqrt(jnp.clip(rel_var, 0.0)),
        betas=c["betas"],
        ess=c["ess"],
        resampled=c["resampled"],
        acceptance=c["acceptance"],
        step_size=c["step_size"],
        log_z_inc=c["log_z_inc"],
        transport_loss=c["transport_loss"],
        num_stages=c["stage"],
        num_resampling=c["num_resampling"],
        truncated=c["truncated"],
        grads=c["grads"],
        evals=c["evals"],
        divergent=c["divergent"],
    )


def _smc_impl(smc, energy, reference, key, num_particles: int, num_runs: int):
    if num_runs == 0:
        return _smc_single(smc, energy, reference, key, num_particles)
    keys = jax.random.split(key, num_runs)
    return jax.vmap(lambda k: _smc_single(smc, energy, reference, k, num_particles))(keys)


_run_traced = eqx.debug.assert_max_traces(_smc_impl, max_traces=None)
_run = eqx.filter_jit(_run_traced)


def _result(out, num_particles: int, num_runs: int | None) -> SMCResult:
    num_stages = np.asarray(out["num_stages"])
    keep = int(np.max(num_stages))
    trim = lambda a: np.asarray(a)[..., :keep]  # noqa: E731
    betas = trim(out["betas"])
    zero = np.zeros((*betas.shape[:-1], 1), betas.dtype)
    return SMCResult(
        particles=out["particles"],
        log_weights=out["log_weights"],
        log_z=out["log_z"],
        log_z_stderr=out["log_z_stderr"],
        betas=np.concatenate([zero, betas], axis=-1),
        ess=trim(out["ess"]),
        resampled=trim(out["resampled"]),
        acceptance_rate=trim(out["acceptance"]),
        step_size=trim(out["step_size"]),
        log_z_increments=trim(out["log_z_inc"]),
        transport_loss=trim(out["transport_loss"]),
        num_stages=num_stages,
        num_resampling=np.asarray(out["num_resampling"]),
        truncated=np.asarray(out["truncated"]),
        num_grad_evals=np.asarray(out["grads"], np.int64),
        num_energy_evals=np.asarray(out["evals"], np.int64),
        num_divergent=np.asarray(out["divergent"]),
        num_runs=num_runs,
    )
