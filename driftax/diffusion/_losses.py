"""Training losses: denoising / velocity regression along a Gaussian path (with EDM weighting
and minibatch-OT couplings) and MeanFlow.

A loss is a Module called as `loss(model, batch, *, key) -> scalar` on a batch of data of shape
`(batch, *event_shape)`; [`fit`][] minimises it with optax.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from .._checks import check_fraction
from .._custom_types import Array, Key, Scalar
from ._bridges._ot import ot_coupling as ot_coupling
from ._conditional import ConditionalModel
from ._forward_processes import OrnsteinUhlenbeck
from ._model import declared_parameterization
from ._path import AbstractPath, LinearInterpolant, check_parameterization


class AbstractLoss(eqx.Module):
    """A training loss `loss(model, batch, *, key) -> scalar` on a data batch."""

    @abc.abstractmethod
    def __call__(self, model, batch: Array, *, key: Key) -> Scalar:
        """The loss of `model` on `batch` (shape `(batch, *event_shape)`) with noise from `key`."""


def _check_model(model):
    if isinstance(model, ConditionalModel):
        return model.parameterization
    p = declared_parameterization(model)
    if p is None:
        raise TypeError(
            "`model` must be a driftax.diffusion AbstractField that declares its "
            "`parameterization` (e.g. a Denoiser or NetworkField)."
        )
    return p


def _split_context(model, batch):
    """`(data, context)` from a batch: a pair for a conditional model, else the data alone."""
    conditional = isinstance(model, ConditionalModel)
    if isinstance(batch, (tuple, list)):
        if len(batch) != 2:
            raise ValueError("a conditional batch must be a pair `(data, context)`.")
        if not conditional:
            raise TypeError(
                "a `(data, context)` batch needs a driftax.diffusion ConditionalModel, got "
                f"{type(model).__name__}."
            )
        data, context = batch
        context = model.check_context(context, batched=True)
        if context.shape[0] != data.shape[0]:
            raise ValueError(
                f"`context` has {context.shape[0]} rows for {data.shape[0]} data points."
            )
        return data, context
    if conditional:
        raise TypeError(
            "a ConditionalModel trains on `(data, context)` batches: pass `context=` to `fit`."
        )
    return batch, None


class DenoisingLoss(AbstractLoss):
    """Regression of a model onto the target of one parameterization along a Gaussian path:
    denoising score matching, EDM, noise prediction and flow matching in one loss.

    For data `x0`, noise `eps ~ N(0, I)` and a time `t`, `x_t = alpha x0 + sigma eps`; the model
    output (in its own parameterization) is converted to `target` and regressed onto the true
    target (`"data"`: `x0`; `"noise"`: `eps`; `"score"`: `-eps / sigma`; `"velocity"`:
    `alpha' x0 + sigma' eps`), weighted by `weighting(t)`.

    **Fields:**

    - `path`: the Gaussian path.
    - `target`: the regression target (default `"data"`).
    - `weighting`: `"edm"` (`(s^2 + sd^2) / (s sd)^2` with `s = sigma/alpha`, for the data
      target), `"none"`, or a callable `t -> weight`.
    - `time_sampling`: `"uniform"` on `[t_data, t_noise]` or `"log_normal"` (EDM: `log s ~
      N(p_mean, p_std^2)`, mapped to t and clipped to the path's interval).
    - `coupling`: `"independent"` or `"ot"` (minibatch optimal transport between data and noise,
      Tong et al. / Pooladian et al.; via ott-jax).
    - `sigma_data`: data scale for the EDM weighting.
    - `label_dropout`: for a [`ConditionalModel`][] trained on `(data, context)` batches, the
      probability of replacing each example's context by the null context, so that the same
      model also learns the unconditional field (classifier-free guidance, Ho & Salimans 2022).

    Flow matching is `DenoisingLoss(LinearInterpolant(), target="velocity", weighting="none")`.
    A batch is the data `(batch, *event_shape)`, or a pair `(data, context)` for a conditional
    model ([`fit`][]`(..., context=labels)` makes these).
    """

    path: AbstractPath
    target: str = eqx.field(default="data", static=True)
    weighting: str | Callable = "edm"
    time_sampling: str = eqx.field(default="log_normal", static=True)
    coupling: str = eqx.field(default="independent", static=True)
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 1.0
    ot_epsilon: float = 0.05
    label_dropout: float = 0.0

    def __check_init__(self):
        check_parameterization(self.target, "target")
        check_fraction(self.label_dropout, "label_dropout", closed_low=True)
        if not (callable(self.weighting) or self.weighting in ("edm", "none")):
            raise ValueError(
                f"`weighting` must be 'edm', 'none' or a callable, got {self.weighting!r}."
            )
        if self.time_sampling not in ("uniform", "log_normal"):
            raise ValueError(
                f"`time_sampling` must be 'uniform' or 'log_normal', got {self.time_sampling!r}."
            )
        if self.coupling not in ("independent", "ot"):
            raise ValueError(f"`coupling` must be 'independent' or 'ot', got {self.coupling!r}.")

    def sample_time(self, key: Key, n: int, dtype) -> Array:
        """`n` training times."""
        lo, hi = sorted([self.path.t_data, self.path.t_noise])
        if self.time_sampling == "uniform":
            return jax.random.uniform(key, (n,), dtype, lo, hi)
        log_s = self.p_mean + self.p_std * jax.random.normal(key, (n,), dtype)
        t = self.path.t_from_half_log_snr(-log_s)
        return jnp.clip(t, lo, hi)

    def weight(self, t: Array) -> Array:
        """The loss weight at time `t`."""
        if callable(self.weighting):
            return self.weighting(t)
        if self.weighting == "none":
            return jnp.ones_like(t)
        s = jnp.exp(-self.path.half_log_snr(t))
        sd = self.sigma_data
        return (s**2 + sd**2) / (s * sd) ** 2

    def __call__(self, model, batch, *, key):
        source = _check_model(model)
        batch, context = _split_context(model, batch)
        n = batch.shape[0]
        kt, ke, kc, kd = jax.random.split(key, 4)
        t = self.sample_time(kt, n, batch.dtype)
        eps = jax.random.normal(ke, batch.shape, batch.dtype)
        if self.coupling == "ot":
            eps = ot_coupling(kc, batch, eps, epsilon=self.ot_epsilon)
        path = self.path
        if context is None:
            evaluate = lambda ti, xt, c, d: model(ti, xt)
            context = drop = jnp.zeros((n,), bool)
        else:
            evaluate = lambda ti, xt, c, d: model(ti, xt, c, d)
            drop = jax.random.bernoulli(kd, self.label_dropout, (n,))

        def one(x0, e, ti, c, d):
            (_, da), (s, ds) = path.alpha_and_derivative(ti), path.sigma_and_derivative(ti)
            xt = path.noised(x0, e, ti)
            out = evaluate(ti, xt, c, d)
            pred = path.convert(out, ti, xt, source=source, target=self.target)
            want = {"data": x0, "noise": e, "score": -e / s, "velocity": da * x0 + ds * e}[
                self.target
            ]
            if self.target == "velocity" and isinstance(path, OrnsteinUhlenbeck):  # has a mean
                want = da * (x0 - path.mean) + ds * e
            return self.weight(ti) * jnp.mean((pred - want) ** 2)

        return jnp.mean(jax.vmap(one)(batch, eps, t, context, drop))


def flow_matching_loss(
    coupling: str = "independent", path: AbstractPath | None = None
) -> DenoisingLoss:
    """Flow matching (velocity regression) on the linear path `x_t = (1 - t) x + t eps` with
    `t ~ U[t_data, t_noise]`, and an independent or minibatch-OT (`"ot"`) coupling."""
    path = LinearInterpolant(t_data=0.0, t_noise=1.0) if path is None else path
    return DenoisingLoss(
        path=path, target="velocity", weighting="none", time_sampling="uniform", coupling=coupling
    )


class MeanFlowLoss(AbstractLoss):
    """The MeanFlow loss (Geng et al. 2025) for a [`MeanFlowModel`][] `u(r, t, z)`.

    With `z_t = (1 - t) x + t eps` and `v = eps - x`, the target is
    `u_tgt = v - (t - r) (v · ∂_z u + ∂_t u)` (one `jax.jvp` with tangents `(0, 1, v)` for
    `(r, t, z)`), held fixed; the loss is `||u - u_tgt||^2`, adaptively weighted by
    `1 / (||u - u_tgt||^2 + c)^p`. Times: `t, r` logit-normal (or uniform), sorted so `r <= t`,
    and `r = t` for a fraction `1 - fraction_mean` of the batch (plain flow matching there).
    """

    fraction_mean: float = 0.25
    time_sampling: str = eqx.field(default="logit_normal", static=True)
    logit_mean: float = -0.4
    logit_std: float = 1.0
    adaptive_p: float = 1.0
    adaptive_c: float = 1e-3

    def __check_init__(self):
        if not 0 <= self.fraction_mean <= 1:
            raise ValueError(f"`fraction_mean` must lie in [0, 1], got {self.fraction_mean}.")
        if self.time_sampling not in ("logit_normal", "uniform"):
            raise ValueError(
                f"`time_sampling` must be 'logit_normal' or 'uniform', got {self.time_sampling!r}."
            )

    def __call__(self, model, batch, *, key):
        n = batch.shape[0]
        k1, k2, k3, k4 = jax.random.split(key, 4)
        dtype = batch.dtype
        if self.time_sampling == "uniform":
            a = jax.random.uniform(k1, (n,), dtype)
            b = jax.random.uniform(k2, (n,), dtype)
        else:
            a = jax.nn.sigmoid(
                self.logit_mean + self.logit_std * jax.random.normal(k1, (n,), dtype)
            )
            b = jax.nn.sigmoid(
                self.logit_mean + self.logit_std * jax.random.normal(k2, (n,), dtype)
            )
        t, r = jnp.maximum(a, b), jnp.minimum(a, b)
        same = jax.random.uniform(k3, (n,)) >= self.fraction_mean
        r = jnp.where(same, t, r)
        eps = jax.random.normal(k4, batch.shape, dtype)

        def one(x, e, ri, ti):
            z = (1.0 - ti) * x + ti * e
            v = e - x
            u, dudt = jax.jvp(
                lambda rr, tt, zz: model(rr, tt, zz),
                (ri, ti, z),
                (jnp.zeros_like(ri), jnp.ones_like(ti), v),
            )
            target = jax.lax.stop_gradient(v - (ti - ri) * dudt)
            err = jnp.sum((u - target) ** 2)
            w = jax.lax.stop_gradient(1.0 / (err + self.adaptive_c) ** self.adaptive_p)
            return w * err

        return jnp.mean(jax.vmap(one)(batch, eps, r, t))


def meanflow_sample(model, x_init: Array, *, num_steps: int = 1) -> Array:
    """Generate with a [`MeanFlowModel`][]: `num_steps` jumps `z_r = z_t - (t - r) u(r, t, z_t)`
    from `t = 1` (noise, `x_init` of shape `(batch, *event_shape)`) to `t = 0`."""
    if not (isinstance(num_steps, int) and num_steps >= 1):
        raise ValueError(f"`num_steps` must be a positive int, got {num_steps!r}.")
    ts = jnp.linspace(1.0, 0.0, num_steps + 1, dtype=x_init.dtype)
    return _meanflow_run(model, x_init, ts)


@eqx.filter_jit
def _meanflow_run(model, x, ts):
    def body(x, i):
        t, r = ts[i], ts[i + 1]
        return jax.vmap(lambda z: z - (t - r) * model(r, t, z))(x), None

    return jax.lax.scan(body, x, jnp.arange(ts.shape[0] - 1))[0]
