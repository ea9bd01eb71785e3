"""Training flows with optax: maximum likelihood on samples, reverse / forward KL to an energy.

Every fit runs as ONE compiled `lax.scan` over the optimisation steps. The compiled loop is cached
on the flow's structure, the optimiser object and the static options, so a second fit of the
same flow with the same optimiser does not recompile. A step whose loss or gradient is not finite
is skipped (parameters unchanged), recorded as such in the loss history, and reported with a
`RuntimeWarning` after the fit; nothing silently returns a NaN flow.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Key
from ..energies._base import AbstractEnergy
from ._distribution import Flow

# ----------------------------------------------------------------------------------------------
# losses (each for a batch; the fit functions use them inside their compiled loops)


def _point_keys(flow: Flow, key: Key | None, n: int):
    """One key per point for a flow with a stochastic log-det (else `None`)."""
    if not flow.bijection.stochastic_log_det:
        return None
    if key is None:
        raise ValueError(
            "this flow's log-det is a random estimate (Hutchinson CNF): pass a keyword `key`."
        )
    return jax.random.split(key, n)


def _log_densities(flow: Flow, x: Array, condition=None, key: Key | None = None) -> Array:
    keys = _point_keys(flow, key, x.shape[0])
    return jax.vmap(lambda xi, ci, ki: flow.log_density(xi, ci, key=ki))(x, condition, keys)


def max_likelihood_loss(
    flow: Flow, data: Array, condition: Array | None = None, *, key: Key | None = None
) -> Array:
    """Negative mean log-likelihood `-mean_i log q(x_i)` of a batch `data` `(n, *event_shape)`.

    `key` is needed (and only used) when the flow's log-det is a random estimate (a Hutchinson
    [`CNF`][]): fresh probes per point give an unbiased loss and gradient.
    """
    return -jnp.mean(_log_densities(flow, data, condition, key))


def reverse_kl_loss(
    flow: Flow,
    energy: AbstractEnergy,
    *,
    key: Key,
    batch_size: int,
    stick_the_landing: bool = False,
    inverse_temperature: Array | float = 1.0,
) -> Array:
    """Reparameterised `E_q[log q(x) - log p̃(x)]` (= KL(q‖p) - log Z = -ELBO) on `batch_size`
    draws `x = T(z)`.

    With `stick_the_landing=True` the score term of `log q` is dropped from the gradient (Roeder
    et al. 2017): `log q` is evaluated with stopped flow parameters at the (differentiable) sample,
    which lowers the gradient variance to zero at the optimum. It needs the flow's inverse.
    `inverse_temperature` `β` targets `p̃^β` instead (annealing).
    """
    k_det = jax.random.fold_in(key, 0x5EED)  # probes of a stochastic log-det (if any)
    z = flow.base.sample(key, (batch_size,))  # type: ignore[attr-defined]
    keys = _point_keys(flow, k_det, batch_size)
    if stick_the_landing:
        x = jax.vmap(lambda zi, ki: flow.transform_and_log_density(zi, key=ki)[0])(z, keys)
        log_q = _log_densities(jax.lax.stop_gradient(flow), x, key=k_det)
    else:
        x, log_q = jax.vmap(lambda zi, ki: flow.transform_and_log_density(zi, key=ki))(z, keys)
    log_p = jax.vmap(energy.log_density)(x)
    return jnp.mean(log_q - inverse_temperature * log_p)


def forward_kl_loss(
    flow: Flow,
    energy: AbstractEnergy,
    *,
    key: Key,
    batch_size: int,
    inverse_temperature: Array | float = 1.0,
) -> Array:
    """Forward KL(p‖q) up to a constant, by self-normalised importance sampling with the flow as
    proposal: `-Σ_i w̄_i log q(x_i)`, `x_i ~ q` (not differentiated), `w̄ ∝ p̃(x_i) / q(x_i)`.

    Mass-covering, but needs the flow to already overlap the target (the weights degenerate
    otherwise); mix it with the reverse KL (see [`fit_reverse_kl`][]'s `forward_weight`).
    """
    k_det = jax.random.fold_in(key, 0x5EED)
    x, log_q0 = flow.sample_and_log_density(key, (batch_size,))
    x, log_q0 = jax.lax.stop_gradient((x, log_q0))
    log_w = inverse_temperature * jax.vmap(energy.log_density)(x) - log_q0
    w = jax.lax.stop_gradient(jax.nn.softmax(jnp.where(jnp.isfinite(log_w), log_w, -jnp.inf)))
    log_q = _log_densities(flow, x, key=k_det)
    return -jnp.sum(w * log_q)


# ----------------------------------------------------------------------------------------------
# plumbing shared by the fits


def _check_optimizer(optimizer):
    if not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise TypeError("`optimizer` must be an optax GradientTransformation (with init/update).")


def _check_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return int(value)


def _check_flow(flow):
    if not isinstance(flow, Flow):
        raise TypeError(f"`flow` must be a driftax.flows.Flow, got {type(flow).__name__}.")


def _partition(flow: Flow, train_base: bool):
    """Trainable parameters: the bijection's float arrays (and the base's if asked)."""
    spec = jax.tree.map(lambda _: False, flow)
    spec = eqx.tree_at(
        lambda f: f.bijection, spec, replace=jax.tree.map(eqx.is_inexact_array, flow.bijection)
    )
    if train_base:
        spec = eqx.tree_at(
            lambda f: f.base, spec, replace=jax.tree.map(eqx.is_inexact_array, flow.base)
        )
    return eqx.partition(flow, spec)


def _all_finite(tree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if eqx.is_inexact_array(x)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _sgd_step(loss_fn, optimizer, params, opt_state, *args):
    """One optimiser step; skipped (parameters unchanged) when the loss, gradient or result is
    not finite. Returns `(params, opt_state, loss, ok)`."""
    loss, grads = jax.value_and_grad(loss_fn)(params, *args)
    updates, new_state = optimizer.update(grads, opt_state, params)
    new_params = eqx.apply_updates(params, updates)
    ok = jnp.isfinite(loss) & _all_finite(grads) & _all_finite(new_params)
    params, opt_state = jax.tree.map(
        lambda a, b: jnp.where(ok, a, b), (new_params, new_state), (params, opt_state)
    )
    return params, opt_state, loss, ok


def _progress_callback(num_steps: int):
    """A host callback drawing a progress bar (tqdm if installed, else plain prints)."""
    state = {}

    def update(step, loss):
        step = int(step)
        if "bar" not in state:
            try:
                from tqdm.auto import tqdm

                state["bar"] = tqdm(total=num_steps)
            except ImportError:  # pragma: no cover
                state["bar"] = None
        bar = state["bar"]
        if bar is not None:
            bar.n = step
            bar.set_postfix(loss=float(loss), refresh=False)
            bar.refresh()
            if step >= num_steps:
                bar.close()
                state.clear()
        else:  # pragma: no cover
            print(f"step {step}/{num_steps}  loss {float(loss):.4f}")

    return update


def _maybe_report(i, loss, num_steps: int, progress: bool):
    if not progress:
        return
    every = max(num_steps // 100, 1)
    jax.lax.cond(
        ((i + 1) % every == 0) | (i + 1 == num_steps),
        lambda: jax.debug.callback(_progress_callback_cache(num_steps), i + 1, loss),
        lambda: None,
    )


_CALLBACKS: dict[int, Callable] = {}


def _progress_callback_cache(num_steps: int):
    # one callback object per length, so the compiled loop is reusable
    if num_steps not in _CALLBACKS:
        _CALLBACKS[num_steps] = _progress_callback(num_steps)
    return _CALLBACKS[num_steps]


def _report_nonfinite(ok: np.ndarray, what: str):
    bad = int(np.size(ok) - np.count_nonzero(ok))
    if bad:
        first = int(np.argmin(ok))
        warnings.warn(
            f"{what}: {bad} of {np.size(ok)} steps had a non-finite loss or gradient (first at "
            f"step {first}); they were skipped and are NaN/inf in the returned loss history.",
            RuntimeWarning,
            stacklevel=3,
        )


# ----------------------------------------------------------------------------------------------
# maximum likelihood


@eqx.filter_jit
@eqx.debug.assert_max_traces(
    max_traces=None
)  # counts traces (tests check a refit does not retrace)
def _ml_loop(
    params,
    static,
    train_x,
    train_c,
    val_x,
    val_c,
    key,
    optimizer,
    num_steps,
    batch_size,
    eval_every,
    patience,
    progress,
):
    n_train = train_x.shape[0]
    steps_per_epoch = n_train // batch_size
    has_val = val_x is not None

    def loss_fn(p, xb, cb, k):
        return max_likelihood_loss(eqx.combine(p, static), xb, cb, key=k)

    def val_loss(p):
        # the same probes at every evaluation (common random numbers for early stopping)
        return loss_fn(p, val_x, val_c, jax.random.fold_in(key, 0x7FFFFFFF))

    def body(carry, i):
        params, opt_state, perm, best, best_val, bad, stopped = carry
        was_stopped = stopped
        epoch, j = i // steps_per_epoch, i % steps_per_epoch
        perm = jax.lax.cond(
            j == 0,
            lambda: jax.random.permutation(jax.random.fold_in(key, epoch), n_train),
            lambda: perm,
        )
        idx = jax.lax.dynamic_slice_in_dim(perm, j * batch_size, batch_size)
        xb = train_x[idx]
        cb = None if train_c is None else train_c[idx]

        def do_step(args):
            params, opt_state = args
            k = jax.random.fold_in(jax.random.fold_in(key, 0x7FFFFFFE), i)
            return _sgd_step(loss_fn, optimizer, params, opt_state, xb, cb, k)

        def skip(args):
            params, opt_state = args
            return params, opt_state, jnp.array(jnp.nan, train_x.dtype), jnp.array(True)

        if patience is None:  # never stops: no branch to compile
            params, opt_state, loss, ok = do_step((params, opt_state))
        else:
            params, opt_state, loss, ok = jax.lax.cond(stopped, skip, do_step, (params, opt_state))
        if has_val:
            evaluate = (~stopped) & (((i + 1) % eval_every == 0) | (i + 1 == num_steps))
            v = jax.lax.cond(
                evaluate, lambda: val_loss(params), lambda: jnp.array(jnp.nan, train_x.dtype)
            )
            improved = evaluate & (v < best_val)
            best = jax.tree.map(lambda a, b: jnp.where(improved, a, b), params, best)
            best_val = jnp.where(improved, v, best_val)
            bad = jnp.where(evaluate, jnp.where(improved, 0, bad + 1), bad)
            if patience is not None:
                stopped = stopped | (bad >= patience)
        else:
            v = jnp.array(jnp.nan, train_x.dtype)
        _maybe_report(i, loss, num_steps, progress)
        return (params, opt_state, perm, best, best_val, bad, stopped), (loss, v, ok, was_stopped)

    init = (
        params,
        optimizer.init(params),
        jnp.arange(n_train),
        params,
        jnp.array(jnp.inf, train_x.dtype),
        jnp.array(0),
        jnp.array(False),
    )
    (params, _, _, best, best_val, _, _), (losses, vals, ok, stopped) = jax.lax.scan(
        body, init, jnp.arange(num_steps)
    )
    return params, best, best_val, losses, vals, ok, stopped


def fit_max_likelihood(
    flow: Flow,
    data: Array,
    *,
    key: Key,
    optimizer,
    num_steps: int,
    batch_size: int,
    condition: Array | None = None,
    validation_fraction: float = 0.0,
    patience: int | None = None,
    eval_every: int | None = None,
    return_best: bool = True,
    train_base: bool = False,
    progress: bool = False,
) -> tuple[Flow, dict[str, Array]]:
    """Fit a flow to samples by maximum likelihood with mini-batch optax steps.

    **Arguments:**

    - `flow`: the [`Flow`][] to train (its bijection's float arrays are trained; the base too
      with `train_base=True`).
    - `data`: samples of shape `(n, *event_shape)`.
    - `key`: PRNG key (validation split, mini-batch shuffling once per epoch).
    - `optimizer`: an optax `GradientTransformation`, e.g. `optax.adam(1e-3)`. Reuse the same
      object to reuse the compiled loop.
    - `num_steps`: number of optimisation steps (mini-batches).
    - `batch_size`: mini-batch size (at most the number of training samples).
    - `condition`: conditions `(n, *cond_shape)` for a conditional flow.
    - `validation_fraction`: fraction of `data` held out to measure the validation loss every
      `eval_every` steps (default: once per epoch).
    - `patience`: stop after this many evaluations without validation improvement (early
      stopping; needs a validation split).
    - `return_best`: with a validation split, return the parameters with the best validation loss.
    - `progress`: draw a progress bar (costs nothing when off).

    **Returns:** `(trained_flow, losses)` where `losses["train"]` is the mini-batch loss of each
    step taken (a skipped non-finite step shows as NaN/inf) and, with a validation split,
    `losses["validation"]` holds the validation losses at the evaluation steps.
    """
    _check_flow(flow)
    _check_optimizer(optimizer)
    num_steps = _check_count(num_steps, "num_steps")
    batch_size = _check_count(batch_size, "batch_size")
    data = jnp.asarray(data)
    if not jnp.issubdtype(data.dtype, jnp.floating):
        data = data.astype(jnp.result_type(float))
    if data.ndim < 1 or tuple(data.shape[1:]) != tuple(flow.event_shape):
        raise ValueError(
            f"`data` must have shape (n, *{tuple(flow.event_shape)}), got {tuple(data.shape)}."
        )
    if not bool(jnp.all(jnp.isfinite(data))):
        raise ValueError("`data` must be finite.")
    if condition is not None:
        if flow.cond_shape is None:
            raise ValueError("this flow is unconditional: do not pass `condition`.")
        condition = jnp.asarray(condition)
        if tuple(condition.shape) != (data.shape[0], *flow.cond_shape):
            raise ValueError(
                f"`condition` must have shape {(data.shape[0], *flow.cond_shape)}, got {condition.shape}."
            )
    elif flow.cond_shape is not None:
        raise ValueError("this flow is conditional: pass `condition` with one row per sample.")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"`validation_fraction` must lie in [0, 1), got {validation_fraction!r}.")
    if patience is not None:
        patience = _check_count(patience, "patience")
        if validation_fraction == 0.0:
            raise ValueError("early stopping (`patience`) needs `validation_fraction > 0`.")

    n = data.shape[0]
    key_split, key_loop = jax.random.split(key)
    n_val = int(round(validation_fraction * n))
    if validation_fraction > 0 and n_val < 1:
        raise ValueError("`validation_fraction` leaves no validation sample; use more data.")
    order = jax.random.permutation(key_split, n) if n_val else jnp.arange(n)
    train_idx, val_idx = order[n_val:], order[:n_val]
    train_x = data[train_idx]
    train_c = None if condition is None else condition[train_idx]
    val_x = data[val_idx] if n_val else None
    val_c = None if (condition is None or not n_val) else condition[val_idx]
    if batch_size > train_x.shape[0]:
        raise ValueError(
            f"`batch_size` ({batch_size}) exceeds the number of training samples ({train_x.shape[0]})."
        )
    steps_per_epoch = train_x.shape[0] // batch_size
    eval_every = steps_per_epoch if eval_every is None else _check_count(eval_every, "eval_every")

    params, static = _partition(flow, train_base)
    last, best, best_val, losses, vals, ok, stopped = _ml_loop(
        params,
        static,
        train_x,
        train_c,
        val_x,
        val_c,
        key_loop,
        optimizer,
        num_steps,
        batch_size,
        eval_every if n_val else None,
        patience,
        progress,
    )
    stopped = np.asarray(stopped)
    taken = int(np.argmax(stopped)) if stopped.any() else num_steps
    ok = np.asarray(ok)[:taken]
    _report_nonfinite(ok, "fit_max_likelihood")
    out = {"train": losses[:taken]}
    chosen = last
    if n_val:
        v = np.asarray(vals)
        out["validation"] = jnp.asarray(v[np.isfinite(v)])
        if return_best and np.isfinite(np.asarray(best_val)):
            chosen = best
    return eqx.combine(chosen, static), out


# ----------------------------------------------------------------------------------------------
# reverse / forward KL to an energy


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def _kl_loop(
    params,
    static,
    energy,
    key,
    optimizer,
    num_steps,
    batch_size,
    stl,
    forward_weight,
    annealing_steps,
    progress,
):
    def loss_fn(p, k, beta):
        flow = eqx.combine(p, static)
        total = 0.0
        if forward_weight < 1.0:
            rev = reverse_kl_loss(
                flow,
                energy,
                key=k,
                batch_size=batch_size,
                stick_the_landing=stl,
                inverse_temperature=beta,
            )
            total = total + (1.0 - forward_weight) * rev
        if forward_weight > 0.0:
            fwd = forward_kl_loss(
                flow,
                energy,
                key=jax.random.fold_in(k, 1),
                batch_size=batch_size,
                inverse_temperature=beta,
            )
            total = total + forward_weight * fwd
        return total

    def body(carry, ik):
        i, k = ik
        params, opt_state = carry
        if annealing_steps:
            beta = jnp.minimum(1.0, 0.01 + i / annealing_steps)
        else:
            beta = 1.0
        params, opt_state, loss, ok = _sgd_step(loss_fn, optimizer, params, opt_state, k, beta)
        _maybe_report(i, loss, num_steps, progress)
        return (params, opt_state), (loss, ok)

    keys = jax.random.split(key, num_steps)
    (params, _), (losses, ok) = jax.lax.scan(
        body, (params, optimizer.init(params)), (jnp.arange(num_steps), keys)
    )
    return params, losses, ok


def fit_reverse_kl(
    flow: Flow,
    energy: AbstractEnergy,
    *,
    key: Key,
    optimizer,
    num_steps: int,
    batch_size: int,
    stick_the_landing: bool = False,
    forward_weight: float = 0.0,
    annealing_steps: int = 0,
    train_base: bool = False,
    progress: bool = False,
) -> tuple[Flow, dict[str, Array]]:
    """Fit a flow to an unnormalised energy by minimising the reverse KL(q‖p) (variational
    inference; Rezende & Mohamed 2015), optionally mixed with the forward KL.

    **Arguments:**

    - `flow`: the [`Flow`][] to train (prefer a flow with cheap `sample_and_log_density`:
      planar, coupling, or `masked_autoregressive_flow(..., invert=False)`).
    - `energy`: the target, any `AbstractEnergy` with the flow's event shape.
    - `key`, `optimizer`, `num_steps`, `batch_size`: as for [`fit_max_likelihood`][].
    - `stick_the_landing`: drop the score term of `log q` from the gradient (lower variance).
    - `forward_weight`: `α` in `(1 - α) KL(q‖p) + α KL(p‖q)`, the forward part estimated by
      self-normalised importance sampling ([`forward_kl_loss`][]); `α = 1` is the pure forward KL.
    - `annealing_steps`: if positive, target `p̃^β` with `β = min(1, 0.01 + step / annealing_steps)`
      (the annealed free energy of Rezende & Mohamed), which helps a flow spread over several modes
      before it commits to one.

    **Returns:** `(trained_flow, losses)` with `losses["train"]` the per-step loss; for the pure
    reverse KL it estimates `KL(q‖p) - log Z = -ELBO`.
    """
    _check_flow(flow)
    _check_optimizer(optimizer)
    if not isinstance(energy, AbstractEnergy):
        raise TypeError(f"`energy` must be a driftax AbstractEnergy, got {type(energy).__name__}.")
    if tuple(energy.event_shape) != tuple(flow.event_shape):
        raise ValueError(
            f"`energy` event shape {tuple(energy.event_shape)} must equal the flow's {tuple(flow.event_shape)}."
        )
    if flow.cond_shape is not None:
        raise ValueError("fit_reverse_kl needs an unconditional flow.")
    num_steps = _check_count(num_steps, "num_steps")
    batch_size = _check_count(batch_size, "batch_size")
    forward_weight = float(forward_weight)
    if not 0.0 <= forward_weight <= 1.0:
        raise ValueError(f"`forward_weight` must lie in [0, 1], got {forward_weight!r}.")
    if (
        isinstance(annealing_steps, bool)
        or not isinstance(annealing_steps, (int, np.integer))
        or annealing_steps < 0
    ):
        raise ValueError(f"`annealing_steps` must be a non-negative int, got {annealing_steps!r}.")
    annealing_steps = int(annealing_steps)
    params, static = _partition(flow, train_base)
    params, losses, ok = _kl_loop(
        params,
        static,
        energy,
        key,
        optimizer,
        num_steps,
        batch_size,
        bool(stick_the_landing),
        forward_weight,
        annealing_steps,
        progress,
    )
    _report_nonfinite(np.asarray(ok), "fit_reverse_kl")
    return eqx.combine(params, static), {"train": losses}


# ----------------------------------------------------------------------------------------------
# diagnostics


@eqx.filter_jit
def _log_weights(flow, energy, key, num_samples):
    if isinstance(flow, Flow):
        x, log_q = flow.sample_and_log_density(key, (num_samples,))
        return jax.vmap(energy.log_density)(x) - log_q
    return flow.sample_and_log_weight(energy, key=key, shape=(num_samples,))[1]


def importance_diagnostics(
    flow: Flow,
    energy: AbstractEnergy,
    *,
    key: Key,
    num_samples: int = 10_000,
    log_normalizer: float | None = None,
) -> dict[str, float]:
    """Importance-sampling diagnostics of a flow `q` as a proposal for `p ∝ exp(log_density)`
    (also of a [`StochasticFlow`][], with its path weights).

    **Returns:** a dict with
    - `log_normalizer`: the importance estimate `log Ẑ = log mean(p̃/q)`,
    - `elbo`: `mean(log p̃ - log q)` (a lower bound on log Z),
    - `ess`: Kish effective sample size of the weights and `ess_fraction = ess / num_samples`,
    - `reverse_kl`: `KL(q‖p) = log Z - ELBO`, with the exact `log_normalizer` when given, else
      with `log Ẑ` (then an underestimate),
    - `num_nonfinite`: draws whose weight was not finite (counted as zero weight).
    """
    from ._snf import StochasticFlow

    if not isinstance(flow, (Flow, StochasticFlow)):
        raise TypeError(f"`flow` must be a Flow or a StochasticFlow, got {type(flow).__name__}.")
    num_samples = _check_count(num_samples, "num_samples")
    log_w = np.asarray(_log_weights(flow, energy, key, num_samples), dtype=np.float64)
    finite = np.isfinite(log_w)
    lw = np.where(finite, log_w, -np.inf)
    m = lw.max()
    log_z = float(m + np.log(np.mean(np.exp(lw - m))))
    w = np.exp(lw - m)
    ess = float(w.sum() ** 2 / (w**2).sum())
    elbo = float(np.mean(log_w[finite])) if finite.any() else -math.inf
    ref = log_z if log_normalizer is None else float(log_normalizer)
    return {
        "log_normalizer": log_z,
        "elbo": elbo,
        "ess": ess,
        "ess_fraction": ess / num_samples,
        "reverse_kl": ref - elbo,
        "num_nonfinite": int((~finite).sum()),
    }
