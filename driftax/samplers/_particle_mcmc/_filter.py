"""The particle filter: bootstrap, guided and auxiliary, optionally conditional (CSMC).

ONE forward pass (`run_filter`) serves every method of this folder: the plain filter, the
conditional filter of particle Gibbs (a frozen reference trajectory in slot 0, ancestor sampling),
and the forward-only statistics (PaRIS, fixed-lag) through a small hook carried in the same
`lax.scan`. Particles are moved by `vmap` of the model's unbatched methods; resampling is the
package's one resampler (`samplers/_resampling.py`), adaptive on the effective sample size.

Weight bookkeeping. Before step `t`, the normalized log-weights `ℓ_{t-1}` (and an optional
look-ahead `λ`) give first-stage weights `ℓ + λ`; when their ESS falls to `threshold · N` the
particles are resampled on them and carry `-log N - λ(ancestor)`, otherwise they keep `ℓ`. The
new weight is that carried value plus `log g + log m - log q`; the log-likelihood increment is
`log Σ_j exp(ℓ_j + λ_j)` (when resampled) plus the log-sum of the new weights, the usual unbiased
estimator of `p(y_t | y_{0:t-1})`.
"""

from __future__ import annotations

import abc
import math
from typing import Any, cast

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from ..._checks import check_choice, check_fraction, check_int
from ..._custom_types import Array, Key
from ...energies._ssm import (
    AbstractAuxiliaryProposal,
    AbstractProposal,
    AbstractStateSpaceModel,
    check_observations,
)
from .._resampling import RESAMPLING_SCHEMES, resample


class ParticleFilterResult(eqx.Module):
    """What [`particle_filter`][] returns (one run).

    **Fields:**

    - `log_likelihood`: the estimate of `log p(y_{0:T-1})` (a scalar; its exponential is
      unbiased). `-inf` when the filter collapsed.
    - `log_likelihood_increments`: the per-step terms, `(T,)`.
    - `particles`: `(T, N, *state_shape)`, the particles after each step's move.
    - `log_weights`: their normalized log-weights, `(T, N)`.
    - `ancestors`: `(T, N)` int32, the index at `t-1` of each particle's parent (`arange` at
      `t = 0` and at steps without resampling).
    - `ess`: Kish effective sample size of each step's weights, `(T,)`.
    - `resampled`: whether the particles were resampled before step `t`, `(T,)` bool.
    - `collapsed_at`: the first step at which every weight was zero or non-finite, `-1` if none.
    - `likelihood_relative_variance`: the Lee–Whiteley estimate of `Var(Ẑ) / Ẑ²` (unbiased for
      `Var(Ẑ)` after multiplying by `Ẑ²`); only for multinomial resampling at every step
      (`ess_threshold=1`, no look-ahead), else `None`. `log1p` of it estimates the variance of
      the log-likelihood when `Ẑ` is near log-normal.
    """

    log_likelihood: Array
    log_likelihood_increments: Array
    particles: Array
    log_weights: Array
    ancestors: Array
    ess: Array
    resampled: Array
    collapsed_at: Array
    likelihood_relative_variance: Array | None = None

    @property
    def filtering_means(self) -> Array:
        """`E[x_t | y_{0:t}]` estimated by the weighted particles, shape `(T, *state_shape)`."""
        w = jnp.exp(self.log_weights)
        return jnp.einsum("tn,tn...->t...", w, self.particles)

    @property
    def num_particles(self) -> int:
        """`N`."""
        return self.log_weights.shape[-1]


class FilterHook(eqx.Module):
    """A statistic carried forward with the particles (PaRIS, fixed-lag): `init` at `t = 0`,
    `step` after each move (both return `(state, output)`), `finish` on the final state."""

    @abc.abstractmethod
    def init(self, model, x0: Array, logw0: Array, key: Key) -> tuple[Any, Any]:
        """`(state, output)` at `t = 0`."""

    @abc.abstractmethod
    def step(
        self, model, state, x_prev, logw_prev, ancestors, x_new, logw_new, t, key
    ) -> tuple[Any, Any]:
        """`(state, output)` after the move to step `t`."""

    @abc.abstractmethod
    def finish(self, state, logw_final) -> Any:
        """The hook's result from its final state and the final normalized weights."""


class _NoHook(FilterHook):
    def init(self, model, x0, logw0, key) -> tuple[Any, Any]:
        del model, x0, logw0, key
        return None, None

    def step(
        self, model, state, x_prev, logw_prev, ancestors, x_new, logw_new, t, key
    ) -> tuple[Any, Any]:
        del model, state, x_prev, logw_prev, ancestors, x_new, logw_new, t, key
        return None, None

    def finish(self, state, logw_final) -> Any:
        del state, logw_final
        return None


def _normalize(logw: Array) -> Array:
    logw = jnp.where(jnp.isnan(logw), -jnp.inf, logw)
    total = logsumexp(logw)
    safe = jnp.where(jnp.isfinite(total), total, 0.0)
    return logw - safe


def _ess(logw_normalized: Array) -> Array:
    return 1.0 / jnp.sum(jnp.exp(2.0 * logw_normalized))


def _nan_to_neg_inf(a: Array) -> Array:
    return jnp.where(jnp.isnan(a) | (a == jnp.inf), -jnp.inf, a)


def run_filter(
    model: AbstractStateSpaceModel,
    ys: Array,
    key: Key,
    num_particles: int,
    *,
    proposal: AbstractProposal | None = None,
    resampling: str = "systematic",
    ess_threshold: float = 0.5,
    differentiable: bool = False,
    reference: Array | None = None,
    ancestor_sampling: bool = False,
    hook: FilterHook | None = None,
) -> tuple[ParticleFilterResult, Any, Any]:
    """The traced forward pass (no argument checks: the front doors check). Returns
    `(ParticleFilterResult, hook_outputs, hook_final)`.

    With `reference` (a `(T, *state_shape)` trajectory) it is the conditional filter: slot 0
    holds the reference at every step and is never resampled away; the other `N-1` ancestors
    are drawn multinomially at every step; with `ancestor_sampling` the reference's ancestor is
    redrawn from `ℓ_j + log m(x_j, x*_t)` (Lindsten, Jordan & Schön, 2014).
    """
    n = num_particles
    T = ys.shape[0]
    hook = _NoHook() if hook is None else hook
    conditional = reference is not None
    auxiliary = isinstance(proposal, AbstractAuxiliaryProposal)
    # typed views for the closures below (each is used only where its branch applies)
    prop = cast(AbstractProposal, proposal)
    aux_prop = cast(AbstractAuxiliaryProposal, proposal)
    ref_path = cast(Array, reference)
    dtype = jnp.result_type(ys)
    log_n = math.log(n)
    sg = jax.lax.stop_gradient

    # ---- t = 0
    k0, kh, key = jax.random.split(key, 3)
    keys0 = jax.random.split(k0, n)
    t0 = jnp.asarray(0)
    if proposal is None:
        x0 = jax.vmap(model.initial_sample)(keys0)
    else:
        x0 = jax.vmap(lambda k: prop.initial_sample(k, ys[0]))(keys0)
    if conditional:
        x0 = x0.at[0].set(ref_path[0].astype(x0.dtype))
    if differentiable:
        x0 = sg(x0)
    logg0 = jax.vmap(lambda x: model.observation_log_density(x, ys[0], t0))(x0)
    if proposal is not None:
        mu = jax.vmap(model.initial_log_density)(x0)
        q = jax.vmap(lambda x: prop.initial_log_density(x, ys[0]))(x0)
        logg0 = logg0 + mu - (sg(q) if differentiable else q)
    logg0 = _nan_to_neg_inf(logg0.astype(dtype))
    u0 = logg0 - log_n
    inc0 = logsumexp(u0)
    collapsed0 = ~jnp.isfinite(inc0)
    logw0 = jnp.where(collapsed0, -log_n, _normalize(u0))
    hook_state, hook_out0 = hook.init(model, x0, logw0, kh)
    collapsed_at0 = jnp.where(collapsed0, 0, -1)
    eve0 = jnp.arange(n)

    def body(carry, inputs):
        x_prev, logw_prev, eve, collapsed_at, hstate = carry
        t, y, x_ref, k = inputs
        k_res, k_move, k_as, k_hook = jax.random.split(k, 4)
        if auxiliary:
            look = jax.vmap(lambda xp: aux_prop.log_predictive(xp, y, t))(x_prev)
            look = _nan_to_neg_inf(look.astype(dtype))
        else:
            look = jnp.zeros_like(logw_prev)
        lam = logw_prev + look
        lam_total = logsumexp(lam)
        lam_norm = _normalize(lam)
        if conditional:
            others = resample(lam, key=k_res, scheme="multinomial", num_samples=n - 1)
            if ancestor_sampling:
                back = jax.vmap(lambda xp: model.transition_log_density(xp, x_ref, t))(x_prev)
                back = _nan_to_neg_inf(back.astype(dtype))
                a_ref = resample(logw_prev + back, key=k_as, scheme="multinomial", num_samples=1)
            else:
                a_ref = jnp.zeros((1,), jnp.int32)
            a_res = jnp.concatenate([a_ref, others])
            do_resample = jnp.asarray(True)
        else:
            a_res = resample(lam, key=k_res, scheme=resampling)
            do_resample = _ess(lam_norm) <= ess_threshold * n
        ancestors = jnp.where(do_resample, a_res, jnp.arange(n, dtype=jnp.int32))
        carried_res = -log_n - look[ancestors]
        if differentiable:
            carried_res = carried_res + logw_prev[ancestors] - sg(logw_prev[ancestors])
        carried = jnp.where(do_resample, carried_res, logw_prev)
        pre = jnp.where(do_resample, lam_total, 0.0)
        xa = x_prev[ancestors]
        keys = jax.random.split(k_move, n)
        if proposal is None:
            x_new = jax.vmap(lambda kk, xp: model.transition_sample(kk, xp, t))(keys, xa)
        else:
            x_new = jax.vmap(lambda kk, xp: prop.sample(kk, xp, y, t))(keys, xa)
        if conditional:
            x_new = x_new.at[0].set(x_ref.astype(x_new.dtype))
        if differentiable:
            x_new = sg(x_new)
        logg = jax.vmap(lambda x: model.observation_log_density(x, y, t))(x_new)
        if proposal is not None or differentiable:
            m = jax.vmap(lambda xp, x: model.transition_log_density(xp, x, t))(xa, x_new)
            if proposal is None:
                logg = logg + m - sg(m)
            else:
                q = jax.vmap(lambda xp, x: prop.log_density(xp, x, y, t))(xa, x_new)
                logg = logg + m - (sg(q) if differentiable else q)
        u = carried + _nan_to_neg_inf(logg.astype(dtype))
        inc = pre + logsumexp(u)
        collapse = ~jnp.isfinite(logsumexp(u))
        logw_new = jnp.where(collapse, -log_n, _normalize(u))
        collapsed_at = jnp.where((collapsed_at < 0) & collapse, t, collapsed_at)
        eve_new = jnp.where(do_resample, eve[ancestors], eve)
        hstate, hout = hook.step(
            model, hstate, x_prev, logw_prev, ancestors, x_new, logw_new, t, k_hook
        )
        out = (x_new, logw_new, ancestors, _ess(logw_new), do_resample, inc, hout)
        return (x_new, logw_new, eve_new, collapsed_at, hstate), out

    refs = ref_path[1:] if conditional else jnp.zeros((T - 1,), dtype)
    inputs = (jnp.arange(1, T), ys[1:], refs, jax.random.split(key, T - 1))
    carry0 = (x0, logw0, eve0, collapsed_at0, hook_state)
    (x_last, logw_last, eve, collapsed_at, hook_state), outs = jax.lax.scan(body, carry0, inputs)
    xs, logws, ancs, esss, res, incs, houts = outs
    particles = jnp.concatenate([x0[None], xs])
    log_weights = jnp.concatenate([logw0[None], logws])
    increments = jnp.concatenate([inc0[None], incs])
    log_likelihood = jnp.where(collapsed_at >= 0, -jnp.inf, jnp.sum(increments))
    rel_var = None
    if (
        not conditional
        and not auxiliary
        and resampling == "multinomial"
        and ess_threshold == 1.0
        and n > 1
    ):
        # Lee & Whiteley (2018): Var(Ẑ)/Ẑ² ≈ 1 - (N/(N-1))^T Σ_{E_i ≠ E_j} W_i W_j
        w = jnp.exp(logw_last)
        per_eve = jnp.zeros(n, w.dtype).at[eve].add(w)
        distinct = 1.0 - jnp.sum(per_eve**2)
        rel_var = 1.0 - jnp.exp(T * (math.log(n) - math.log(n - 1))) * distinct
    result = ParticleFilterResult(
        log_likelihood=log_likelihood,
        log_likelihood_increments=increments,
        particles=particles,
        log_weights=log_weights,
        ancestors=jnp.concatenate([jnp.arange(n, dtype=jnp.int32)[None], ancs]),
        ess=jnp.concatenate([_ess(logw0)[None], esss]),
        resampled=jnp.concatenate([jnp.zeros((1,), bool), res]),
        collapsed_at=collapsed_at,
        likelihood_relative_variance=rel_var,
    )
    hook_outputs = (hook_out0, houts)
    return result, hook_outputs, hook.finish(hook_state, logw_last)


def check_filter_args(
    model,
    observations,
    num_particles,
    *,
    proposal=None,
    resampling="systematic",
    ess_threshold=0.5,
    minimum_particles: int = 2,
) -> Array:
    """The eager checks shared by every front door; returns the observations as an array."""
    if not isinstance(model, AbstractStateSpaceModel):
        raise TypeError(
            f"`model` must be an AbstractStateSpaceModel (e.g. linear_gaussian_ssm, "
            f"growth_model), got {type(model).__name__}."
        )
    ys = check_observations(model, observations)
    check_int(num_particles, "num_particles", minimum_particles)
    if proposal is not None and not isinstance(proposal, AbstractProposal):
        raise TypeError(
            "`proposal` must be an AbstractProposal (a sampler AND a log density `log_density`, "
            f"so that the weights can correct for it), got {type(proposal).__name__}."
        )
    check_choice(resampling, "resampling", RESAMPLING_SCHEMES)
    check_fraction(ess_threshold, "ess_threshold")
    return ys


# one compiled program per configuration (options and hook); it counts its traces (tests check a
# second call with the same shapes does not retrace)
_particle_filter_jit = eqx.filter_jit(eqx.debug.assert_max_traces(run_filter, max_traces=None))


def checked_filter(
    model, observations, key, num_particles, *, raise_on_collapse: bool = True, **options
) -> tuple[ParticleFilterResult, Any, Any]:
    """The front door every forward-pass method shares (`particle_filter`, PaRIS, fixed-lag):
    the eager argument checks, the compiled `run_filter` (`options`: its keyword arguments),
    and the collapse check. Returns `run_filter`'s `(result, hook_outputs, hook_final)`."""
    checked = {k: options[k] for k in ("proposal", "resampling", "ess_threshold") if k in options}
    ys = check_filter_args(model, observations, num_particles, **checked)
    if "ess_threshold" in options:
        options["ess_threshold"] = float(options["ess_threshold"])
    out = _particle_filter_jit(model, ys, key, int(num_particles), **options)
    if raise_on_collapse:
        raise_if_collapsed(out[0])
    return out


def raise_if_collapsed(result: ParticleFilterResult) -> None:
    """Eagerly raise when a concrete filter result collapsed (traced results pass)."""
    if isinstance(result.collapsed_at, jax.core.Tracer):
        return
    step = int(result.collapsed_at)
    if step >= 0:
        raise ValueError(
            f"the particle filter collapsed at time step {step}: every particle's weight was zero "
            "or non-finite (check `model` against `observations` at that step, or use more "
            "`num_particles` / a `proposal` that follows the observations)."
        )


def particle_filter(
    model: AbstractStateSpaceModel,
    observations: Array,
    *,
    key: Key,
    num_particles: int,
    proposal: AbstractProposal | None = None,
    resampling: str = "systematic",
    ess_threshold: float = 0.5,
    differentiable: bool = False,
    raise_on_collapse: bool = True,
) -> ParticleFilterResult:
    """Run a particle filter on a state-space model and estimate its log-likelihood.

    The filter is bootstrap (particles moved by the transition) when `proposal` is `None`,
    guided with an [`AbstractProposal`][driftax.energies.AbstractProposal], and auxiliary with
    an [`AbstractAuxiliaryProposal`][driftax.energies.AbstractAuxiliaryProposal] (resampling on
    the weights times its look-ahead). Resampling is adaptive: before each step, when the
    effective sample size of the (first-stage) weights is at most `ess_threshold · N`
    (`ess_threshold=1`: at every step). `exp(log_likelihood)` is unbiased for `p(y_{0:T-1})`.

    One compiled `lax.scan` over time (particles by `vmap`); a second call with the same shapes
    and options does not recompile.

    **Arguments:**

    - `model`: an [`AbstractStateSpaceModel`][driftax.energies.AbstractStateSpaceModel].
    - `observations`: `(T, *observation_shape)`.
    - `key`: a JAX PRNG key.
    - `num_particles`: `N >= 2`.
    - `proposal`: `None` (bootstrap), a guided or an auxiliary proposal.
    - `resampling`: `"systematic"` (default), `"stratified"` or `"multinomial"`.
    - `ess_threshold`: in `(0, 1]`.
    - `differentiable`: make `jax.grad` of `log_likelihood` with respect to the model's
      parameters a score estimate (Fisher's identity along the particles' genealogy): the
      particles and the resampling are stop-gradient, and the weights carry the gradient of
      their ancestors' weights (Ścibior & Wood, 2021). The forward values are unchanged.
    - `raise_on_collapse`: raise a `ValueError` naming the time step when every weight became
      zero or non-finite (default); with `False` the result reports it in `collapsed_at` and a
      `-inf` log-likelihood. Never a NaN log-likelihood.

    **Returns:** a [`ParticleFilterResult`][].

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    model = dx.energies.linear_gaussian_ssm(
        0.9 * jnp.eye(1), jnp.eye(1), jnp.eye(1), jnp.eye(1), jnp.zeros(1), jnp.eye(1)
    )
    _, ys = model.simulate(jax.random.key(0), 50)
    out = dx.samplers.particle_filter(model, ys, key=jax.random.key(1), num_particles=200)
    exact = dx.energies.kalman_filter(model, ys).log_likelihood
    print(float(out.log_likelihood), float(exact))
    ```
    """
    return checked_filter(
        model,
        observations,
        key,
        num_particles,
        proposal=proposal,
        resampling=resampling,
        ess_threshold=ess_threshold,
        differentiable=differentiable,
        raise_on_collapse=raise_on_collapse,
    )[0]
