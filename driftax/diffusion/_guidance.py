"""Guidance and composition: classifier-free guidance, autoguidance, products of experts by
score sums, and Feynman–Kac corrector (FKC) weights with SMC resampling along the reverse SDE."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_finite
from .._custom_types import Array, Key
from ..energies._gaussian import normal_log_density
from ..energies._metrics_logz import importance_ess
from ..samplers._resampling import resample as resample_index
from ._grid import SCHEDULES, Schedule, _check_num_steps, time_grid
from ._model import AbstractField, ParameterizedField, declared_parameterization, declared_path
from ._path import AbstractPath, check_parameterization
from ._solve import _check_x_init, default_schedule
from ._solvers import _epsilon_at

_declared = declared_parameterization


def _as_interval(value) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in np.ravel(np.asarray(value, dtype=float)))
    except (TypeError, ValueError) as e:
        raise TypeError(f"`interval` must be a pair of times (t_lo, t_hi), got {value!r}.") from e


class Guided(AbstractField):
    """`guide(t, x) + weight · (field(t, x) - guide(t, x))`: guidance by extrapolation.

    Every parameterization is affine in the score at fixed `(t, x)`, so the combination is the
    same whichever one both fields use (they must use the same). `weight = 1` is `field`;
    `weight > 1` pushes away from `guide`. See [`classifier_free_guidance`][] and
    [`autoguidance`][].

    `interval = (t_lo, t_hi)` applies the guidance only for times `t_lo <= t <= t_hi` of the
    path and returns `field(t, x)` elsewhere (guidance in a limited interval, Kynkäänniemi et
    al. 2024: guidance at high noise costs diversity, at low noise it does little).

    An [`AbstractField`][]: it declares the parameterization and path of its fields when they
    declare them (then the conversion methods work), else `None`.
    """

    field: Callable
    guide: Callable
    weight: float
    interval: tuple[float, ...] | None = eqx.field(
        default=None, static=True, converter=_as_interval
    )

    def __check_init__(self):
        check_finite(self.weight, "weight")
        if self.interval is not None:
            iv = check_finite(self.interval, "interval")
            if iv.shape != (2,) or not float(iv[0]) <= float(iv[1]):
                raise ValueError(
                    f"`interval` must be (t_lo, t_hi) with t_lo <= t_hi, got {self.interval!r}."
                )
        a, b = _declared(self.field), _declared(self.guide)
        if a is not None and b is not None and a != b:
            raise ValueError(f"`field` ({a!r}) and `guide` ({b!r}) must share a parameterization.")

    @property
    def parameterization(self) -> str | None:
        """The parameterization of the fields, when they declare one."""
        return _declared(self.field) or _declared(self.guide)

    @property
    def path(self) -> AbstractPath | None:
        """The path of the fields, when they declare one."""
        return declared_path(self.field) or declared_path(self.guide)

    def __call__(self, t, x):
        g = self.guide(t, x)
        f = self.field(t, x)
        w = self.weight
        if self.interval is not None:
            lo, hi = self.interval
            tt = jnp.asarray(t)
            w = jnp.where((tt >= lo) & (tt <= hi), w, 1.0)
        return g + w * (f - g)


def classifier_free_guidance(
    conditional: Callable,
    unconditional: Callable,
    weight: float,
    *,
    interval: tuple[float, float] | None = None,
) -> Guided:
    """Classifier-free guidance (Ho & Salimans 2022): `u + w (c - u)` for a conditional field
    `c` and an unconditional field `u` in the same parameterization (e.g.
    `model.given(label)` and `model.unconditional()` of one trained [`ConditionalModel`][]).
    `interval = (t_lo, t_hi)`: guide only at those times (see [`Guided`][])."""
    # pyright reads the base's AbstractVar `path`/`parameterization` as init fields; Guided
    # implements them as properties, so they are not constructor arguments
    return Guided(field=conditional, guide=unconditional, weight=weight, interval=interval)  # pyright: ignore[reportCallIssue]


def autoguidance(
    model: Callable,
    weak_model: Callable,
    weight: float,
    *,
    interval: tuple[float, float] | None = None,
) -> Guided:
    """Autoguidance (Karras et al. 2024): guide a model with a weaker version of itself
    (smaller or less trained), `D0 + w (D1 - D0)`; for a conditional model, both at the same
    context (`main.given(c)`, `weak.given(c)`). `interval` as in [`Guided`][]."""
    return Guided(field=model, guide=weak_model, weight=weight, interval=interval)  # pyright: ignore[reportCallIssue]


class ScoreSum(eqx.Module):
    """`sum_i weights[i] · fields[i](t, x)`: the score of the product `prod_i p_i^{w_i}` when the
    fields are scores (or noise predictions, which are `-sigma ·` scores). Not the product's
    field in the data or velocity parameterizations (those are affine with an offset).

    The sum of the time-t scores is a heuristic for the product of the data distributions:
    use [`fkc_sample`][] for the corrected (Feynman–Kac) sampler.
    """

    fields: tuple
    weights: tuple

    def __check_init__(self):
        if len(self.fields) != len(self.weights) or not self.fields:
            raise ValueError("`fields` and `weights` must be non-empty and of equal length.")
        for f in self.fields:
            p = _declared(f)
            if p is not None and p not in ("score", "noise"):
                raise ValueError(
                    f"a product of experts sums scores (or noises); got a {p!r} field: use "
                    "`model.as_('score')`."
                )

    def __call__(self, t, x):
        out = self.weights[0] * self.fields[0](t, x)
        for w, f in zip(self.weights[1:], self.fields[1:], strict=True):
            out = out + w * f(t, x)
        return out


def product_of_experts(*fields: Callable, weights: Sequence[float] | None = None) -> ScoreSum:
    """Score of the product of experts `prod_i p_i^{w_i}` by summing (weighted) scores."""
    weights = tuple(float(w) for w in (weights if weights is not None else [1.0] * len(fields)))
    return ScoreSum(fields=tuple(fields), weights=weights)


# ----------------------------------------------------------------------------- FKC / SMC


class FKCResult(eqx.Module):
    """The result of [`fkc_sample`][].

    - `x`: particles at `t_data`, shape `(num_particles, *event_shape)`.
    - `log_weights`: their normalized log weights (use them for estimates; after a final
      resampling they are uniform).
    - `ess`: effective sample size before each step's resampling decision, `(num_steps,)`.
    - `num_resampled`: how many steps resampled.
    - `log_normalizer`: estimate of `log ∫ prod_i p_{i,t_data}(x)^{beta_i} dx` (the normalizer
      of the product at the data end; exact up to the prior approximation at `t_noise`).
    """

    x: Array
    log_weights: Array
    ess: Array
    num_resampled: Array
    log_normalizer: Array


@eqx.filter_jit
def _fkc(models, betas, x_init, ts, key, epsilon, ess_threshold, resample, final_resample):
    path = models[0].path
    n = x_init.shape[0]
    num_steps = ts.shape[0] - 1
    sum_beta = sum(betas)
    sig0 = path.sigma(ts[0])
    # Experts at t_noise are ~ N(0, sigma^2) each; the product is N(0, sigma^2 / sum beta).
    log_prior = jax.vmap(lambda x: normal_log_density(x, scale=sig0))(x_init)
    log_w0 = (sum_beta - 1.0) * log_prior

    def fields(t, x):
        vs, ss = [], []
        for m in models:
            v, s = m.get_many(t, x, ("velocity", "score"))
            vs.append(v)
            ss.append(s)
        u = sum(b * v for b, v in zip(betas, vs, strict=True))
        big_s = sum(b * s for b, s in zip(betas, ss, strict=True))
        g = sum(b * jnp.sum(v * (big_s - s)) for b, v, s in zip(betas, vs, ss, strict=True))
        return u, big_s, g

    def body(carry, i):
        x, log_w, log_z, count, key = carry
        key, k_noise, k_res = jax.random.split(key, 3)
        t0, t1 = ts[i], ts[i + 1]
        dt = t1 - t0
        u, s, g = jax.vmap(lambda xx: fields(t0, xx))(x)
        eps = _epsilon_at(epsilon, path, t0)
        z = jax.random.normal(k_noise, x.shape, x.dtype)
        x = x + dt * u + eps * jnp.abs(dt) * s + jnp.sqrt(2.0 * eps * jnp.abs(dt)) * z
        inc = g * dt
        log_z = log_z + jax.nn.logsumexp(log_w + inc) - jax.nn.logsumexp(log_w)
        log_w = log_w + inc
        log_w = log_w - jax.nn.logsumexp(log_w)
        ess = importance_ess(log_w).ess
        do = ess < ess_threshold * n
        if final_resample:
            do = do | (i == num_steps - 1)
        idx = jnp.where(do, resample_index(log_w, key=k_res, scheme=resample), jnp.arange(n))
        x = x[idx]
        log_w = jnp.where(do, jnp.full_like(log_w, -jnp.log(n)), log_w)
        return (x, log_w, log_z, count + do.astype(jnp.int32), key), ess

    log_w0n = log_w0 - jax.nn.logsumexp(log_w0)
    log_z0 = jax.nn.logsumexp(log_w0) - jnp.log(n)
    init = (x_init, log_w0n, log_z0, jnp.zeros((), jnp.int32), key)
    (x, log_w, log_z, count, _), ess = jax.lax.scan(body, init, jnp.arange(num_steps))
    return x, log_w, ess, count, log_z


def fkc_sample(
    fields: Sequence[Callable],
    path: AbstractPath,
    x_init: Array,
    *,
    key: Key,
    num_steps: int,
    betas: Sequence[float] | None = None,
    parameterization: str = "score",
    epsilon: float | Callable | None = None,
    schedule: str | None = None,
    resample: str = "systematic",
    ess_threshold: float = 0.5,
    final_resample: bool = False,
) -> FKCResult:
    """Feynman–Kac corrector sampling (Skreta et al. 2025) of the product/annealed path
    `q_t ∝ prod_i p_{i,t}^{beta_i}` of diffusion models sharing one `path`, with SMC resampling.

    Particles follow the SDE `dx = (u + eps S) dtau + sqrt(2 eps) dW` with `u = sum_i beta_i
    v_i` (the experts' probability-flow velocities) and `S = sum_i beta_i s_i` (their scores),
    and carry log-weights `d log w = sum_i beta_i v_i · (S - s_i) dt`, the Feynman–Kac term
    that makes the weighted particles follow `q_t` exactly (no divergences needed: they cancel
    between `u` and `d/dt log q`). Resampling (systematic or multinomial) when the ESS falls
    below `ess_threshold · num_particles`.

    Covers annealing (one field, `betas=[beta]`: `p^beta`), products of experts
    (`betas=[1, 1]`) and classifier-free guidance (`betas=[1 - w, w]` on unconditional and
    conditional fields).

    **Arguments:**

    - `fields`: the experts, each `field(t, x)` in `parameterization`.
    - `path`: their common path; `x_init`: particles at `t_noise` drawn from the prior
      `N(0, sigma(t_noise)^2 I)` (initial weights correct them to `q_{t_noise}`).
    - `key`, `num_steps`, `schedule`: as in [`solve`][]; `epsilon`: the SDE diffusion (`None`:
      the path's reverse SDE).
    - `betas`: exponents (default all 1).

    **Returns:** an [`FKCResult`][].
    """
    if not isinstance(path, AbstractPath):
        raise TypeError(
            f"`path` must be a driftax.diffusion AbstractPath, got {type(path).__name__}."
        )
    fields = tuple(fields)
    if not fields or not all(callable(f) for f in fields):
        raise TypeError("`fields` must be a non-empty sequence of callables.")
    betas = tuple(float(b) for b in (betas if betas is not None else [1.0] * len(fields)))
    if len(betas) != len(fields):
        raise ValueError("`betas` must have one entry per field.")
    check_parameterization(parameterization)
    if resample not in ("systematic", "multinomial"):
        raise ValueError(f"`resample` must be 'systematic' or 'multinomial', got {resample!r}.")
    if not 0 <= ess_threshold <= 1:
        raise ValueError(f"`ess_threshold` must lie in [0, 1], got {ess_threshold}.")
    x_init = _check_x_init(x_init)
    num_steps = _check_num_steps(num_steps)
    sched = default_schedule(path, None) if schedule is None else schedule
    if sched not in SCHEDULES:
        raise ValueError(f"`schedule` must be one of {SCHEDULES}, got {sched!r}.")
    ts = time_grid(path, num_steps, cast(Schedule, sched)).astype(x_init.dtype)
    models = tuple(
        ParameterizedField(field=f, path=path, parameterization=parameterization) for f in fields
    )
    x, log_w, ess, count, log_z = _fkc(
        models,
        betas,
        x_init,
        ts,
        key,
        epsilon,
        float(ess_threshold),
        resample,
        bool(final_resample),
    )
    return FKCResult(x=x, log_weights=log_w, ess=ess, num_resampled=count, log_normalizer=log_z)


def weighted_moments(x: Array, log_weights: Array) -> tuple[Array, Array, Array]:
    """`(mean, variance, ess)` of weighted particles (elementwise moments)."""
    w = jax.nn.softmax(log_weights)
    flat = x.reshape(x.shape[0], -1)
    mean = w @ flat
    var = w @ (flat - mean) ** 2
    ess = importance_ess(log_weights).ess
    shape = x.shape[1:]
    return mean.reshape(shape), var.reshape(shape), ess
