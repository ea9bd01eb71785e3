"""Training-free guidance: steer an unconditional diffusion model towards `p(x | y)` with a
differentiable predictor `log f(y | x_data)` evaluated on the model's denoised estimate (DPS,
Chung et al. 2023; the unified TFG family, Ye et al. 2024: variance guidance, mean guidance,
implicit (Gaussian-smoothed) dynamics)."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp

from .._checks import check_finite, check_int
from .._custom_types import Array, Key, Point, ScalarLike
from ._model import AbstractField, declared_path
from ._path import AbstractPath


def _hyper(value, t):
    return value(t) if callable(value) else value


def _is_zero(value) -> bool:
    """A hyperparameter known (not traced, not a schedule) to be 0: its term is skipped."""
    if callable(value) or isinstance(value, jax.core.Tracer):
        return False
    return float(value) == 0.0


class TrainingFreeGuidance(AbstractField):
    """A guided score field from an unconditional `model` and a differentiable predictor
    `log_likelihood(x_data) -> scalar` (`log f(y | x_data)` for the target `y`, closed over).

    With the model's denoised estimate `x̂ = D(t, x)` and `g(z) = ∇ log f̃(z)`, where
    `f̃(z) = E_δ f(z + gamma δ)` is the predictor smoothed by Gaussian noise of scale `gamma`
    (TFG's implicit dynamics; `num_smoothing` fixed draws, common to all points and times;
    exact when `gamma = 0`), the guided score is

    `score(t, x) + rho · ∇ₓ log f̃(D(t, x)) + (alpha / sigma^2) · Δ`,

    - variance guidance (`rho`): the gradient through the denoiser, back to `x_t` (DPS with
      `rho` = its step size, `mu = gamma = 0`);
    - mean guidance (`mu`, `num_iter`): `Δ` is the shift of `x̂` by `num_iter` gradient steps
      `Δ ← Δ + mu · g(x̂ + Δ)` on the predictor (not differentiated through the model:
      MPGD-style), which moves the score as shifting the denoised estimate does
      (`score = (alpha x̂ - x) / sigma^2`).

    `rho`, `mu` and `gamma` may be numbers or callables of `t` (TFG's schedules). Recurrence
    (re-noising and repeating a step) is a sampler matter: use it with a
    [`PredictorCorrector`][] if wanted. The field declares `parameterization = "score"` along
    the model's path; it costs one model evaluation and one backward pass per call (plus
    `num_iter` predictor gradients).

    **Arguments:**

    - `model`: an [`AbstractField`][] (any parameterization) with a declared path.
    - `log_likelihood`: `x_data -> log f(y | x_data)`, differentiable.
    - `rho`, `mu`, `gamma`, `num_iter`, `num_smoothing`: as above (defaults: DPS with step 1).
    - `key`: for the smoothing draws (only used when `gamma` is not 0).
    """

    model: AbstractField
    log_likelihood: Callable
    rho: float | Callable = 1.0
    mu: float | Callable = 0.0
    gamma: float | Callable = 0.0
    num_iter: int = eqx.field(default=1, static=True)
    num_smoothing: int = eqx.field(default=16, static=True)
    key: Key | None = None

    def __check_init__(self):
        if not isinstance(self.model, AbstractField) or declared_path(self.model) is None:
            raise TypeError(
                "`model` must be a driftax.diffusion AbstractField with a declared path."
            )
        if not callable(self.log_likelihood):
            raise TypeError("`log_likelihood` must be a callable x_data -> scalar.")
        for name in ("rho", "mu", "gamma"):
            v = getattr(self, name)
            if not callable(v):
                check_finite(v, name)
        if not (callable(self.gamma) or isinstance(self.gamma, jax.core.Tracer)) and (
            float(self.gamma) < 0
        ):
            raise ValueError(f"`gamma` must be non-negative, got {self.gamma}.")
        check_int(self.num_iter, "num_iter", 0)
        check_int(self.num_smoothing, "num_smoothing")

    @property
    def path(self) -> AbstractPath:  # pyright: ignore[reportIncompatibleVariableOverride]
        """The model's path."""
        return self.model.path

    @property
    def parameterization(self) -> str:  # pyright: ignore[reportIncompatibleVariableOverride]
        """`"score"`."""
        return "score"

    def smoothed_log_likelihood(self, t: ScalarLike, z: Point) -> Array:
        """`log f̃(z)`: the predictor averaged over `num_smoothing` Gaussian perturbations of
        scale `gamma(t)` (`log f(z)` when `gamma` is 0)."""
        if _is_zero(self.gamma):
            return self.log_likelihood(z)
        gamma = _hyper(self.gamma, t)
        key = jax.random.key(0) if self.key is None else self.key
        deltas = jax.random.normal(key, (self.num_smoothing, *z.shape), z.dtype)
        vals = jax.vmap(lambda d: self.log_likelihood(z + gamma * d))(deltas)
        return jax.nn.logsumexp(vals) - jnp.log(self.num_smoothing)

    def __call__(self, t, x):
        path = self.path
        t = jnp.asarray(t, x.dtype)
        x_hat, pullback = jax.vjp(lambda y: self.model.denoise(t, y), x)
        score = path.convert(x_hat, t, x, source="data", target="score")
        grad_f = jax.grad(lambda z: self.smoothed_log_likelihood(t, z))
        out = score + _hyper(self.rho, t) * pullback(grad_f(x_hat))[0]
        if self.num_iter and not _is_zero(self.mu):
            mu = _hyper(self.mu, t)
            base = jax.lax.stop_gradient(x_hat)

            def body(_, delta):
                return delta + mu * grad_f(base + delta)

            delta = jax.lax.fori_loop(0, self.num_iter, body, jnp.zeros_like(x))
            out = out + path.alpha(t) / path.sigma(t) ** 2 * delta
        return out


def dps(model: AbstractField, log_likelihood: Callable, scale: float | Callable = 1.0):
    """Diffusion posterior sampling (Chung et al. 2023): `score + scale · ∇ₓ log f(y | D(t, x))`
    with the gradient through the denoiser; a [`TrainingFreeGuidance`][] with `rho = scale`."""
    return TrainingFreeGuidance(model=model, log_likelihood=log_likelihood, rho=scale)  # pyright: ignore[reportCallIssue]
