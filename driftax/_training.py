"""The one training loop of driftax, shared by flows and diffusion (a sibling of `_divergence.py`).

A fit is a loss `loss(model, batch, *, key) -> (value, aux)` plus this loop:

- ONE compiled `lax.scan` over the optimisation steps (`eqx.filter_jit` once, at the boundary).
  Everything a front door varies between calls (the model's arrays, the data, the energy inside
  the loss, the key, the progress-bar id) is a traced argument, so a second fit with the same
  shapes, the same loss *structure* and the same optimizer object never recompiles. Losses are
  therefore written as `eqx.Module`s (their arrays are traced, their static fields hashed), not
  as closures created per call.
- Batches come from a batcher: [`Minibatches`][] over a dataset (shuffled epochs by default,
  or draws with replacement), `None` for key-only losses (reverse KL, learned samplers), or any
  [`AbstractBatcher`][] with its own carried state (e.g. a replay buffer).
- A filter spec says what trains: a pytree of bools shaped like the model, or a function of a
  leaf (default: every inexact array). The rest is frozen.
- Optional EMA of the trained parameters (with the usual warm-up, see [`train`][]).
- ONE non-finite policy: a step whose loss, gradient or updated parameters are not finite is
  skipped (parameters, optimizer state, EMA unchanged), marked in the history's `finite` and
  counted in `num_nonfinite`, and [`train`][] warns ONCE after the loop with a
  `RuntimeWarning` naming the first such step.
- ONE progress mechanism: `driftax._progress` (shared with the sampler driver).
- ONE history type: [`TrainHistory`][].

Use [`train`][] from a front door (eager, warns), or [`train_loop`][] inside a traced function
(e.g. a fit inside SMC's stages), which returns the same history without the warning.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _progress
from ._checks import check_count as check_count
from ._custom_types import Array, Key, PyTree

# ----------------------------------------------------------------------------------------------
# history


class TrainHistory(eqx.Module):
    """What a fit did, step by step.

    **Fields:**

    - `losses`: the loss of every step, shape `(num_steps,)` (the value computed, also on a
      skipped step, where it is typically NaN/inf; NaN for steps after an early stop).
    - `aux`: the loss's auxiliary output stacked over steps (leading axis `num_steps`), or
      `None`. The fields of a structured `aux` (an `eqx.Module` or a dict) also read as
      attributes of the history (`fit_sampler`'s `history.elbo`).
    - `finite`: bool per step, False where the step was skipped as non-finite.
    - `num_nonfinite`: number of skipped steps (among those taken).
    - `num_steps_taken`: steps run before an early stop (`num_steps` without one).
    - `validation`: validation losses at the evaluation steps (NaN elsewhere), shape
      `(num_steps,)`, or `None` without a validation loss.
    - `wall_time`: seconds the compiled loop took, measured on the host (not in the graph;
      NaN inside [`train_loop`][]).
    """

    losses: Array
    aux: PyTree
    finite: Array
    num_nonfinite: Array | int
    num_steps_taken: Array | int
    validation: Array | None = None
    wall_time: float = eqx.field(static=True, default=float("nan"))

    def __getattr__(self, name: str) -> Any:
        # the named fields of a structured `aux` (an eqx.Module or a dict) read as attributes
        # of the history, e.g. `fit_sampler`'s `history.elbo`
        if name.startswith("_"):
            raise AttributeError(name)
        aux = object.__getattribute__(self, "aux")
        if isinstance(aux, dict) and name in aux:
            return aux[name]
        if isinstance(aux, eqx.Module) and name in getattr(aux, "__dataclass_fields__", {}):
            return getattr(aux, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


# ----------------------------------------------------------------------------------------------
# batches


class AbstractBatcher(eqx.Module):
    """Where the batches of a fit come from. `init(key)` makes the carried state; `next(state,
    model, key, step)` returns `(batch, state)` before each step; `update(state, model, aux,
    key)` may change the state after it (e.g. push new samples into a replay buffer)."""

    def init(self, key: Key) -> PyTree:
        """The initial carried state (default: none)."""
        del key
        return None

    def next(self, state: PyTree, model, key: Key, step: Array) -> tuple[PyTree, PyTree]:
        """`(batch, new_state)` for step `step`."""
        raise NotImplementedError

    def update(self, state: PyTree, model, aux: PyTree, key: Key) -> PyTree:
        """The state after the step (default: unchanged)."""
        del model, aux, key
        return state


class Minibatches(AbstractBatcher):
    """Minibatches of `batch_size` rows of `data` (a pytree whose leaves share a leading axis
    `n`).

    With `replace=False` (the default) the data are shuffled once per epoch and cut into
    `n // batch_size` consecutive batches (the last `n % batch_size` rows of each shuffle are
    left out of that epoch); with `replace=True` every batch is `batch_size` rows drawn
    uniformly with replacement. An optional `sharding` (a `jax.sharding.Sharding`) shards
    every batch over devices (data parallelism)."""

    data: PyTree
    batch_size: int = eqx.field(static=True)
    replace: bool = eqx.field(static=True, default=False)
    sharding: Any = eqx.field(static=True, default=None)

    def __check_init__(self):
        n = _num_rows(self.data)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise ValueError(f"`batch_size` must be a positive int, got {self.batch_size!r}.")
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int, got {self.batch_size!r}.")
        if not self.replace and self.batch_size > n:
            raise ValueError(
                f"`batch_size` ({self.batch_size}) exceeds the number of samples ({n})."
            )

    def init(self, key):
        return jnp.arange(_num_rows(self.data))

    def next(self, state, model, key, step):
        n = _num_rows(self.data)
        if self.replace:
            idx = jax.random.randint(key, (self.batch_size,), 0, n)
        else:
            per_epoch = n // self.batch_size
            j = step % per_epoch
            state = jax.lax.cond(j == 0, lambda: jax.random.permutation(key, n), lambda: state)
            idx = jax.lax.dynamic_slice_in_dim(state, j * self.batch_size, self.batch_size)
        batch = jax.tree.map(lambda a: a[idx], self.data)
        if self.sharding is not None:
            batch = jax.lax.with_sharding_constraint(batch, self.sharding)
        return batch, state


def _num_rows(data) -> int:
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError("`data` has no arrays.")
    n = {int(jnp.shape(a)[0]) if jnp.ndim(a) else -1 for a in leaves}
    if len(n) != 1 or -1 in n:
        raise ValueError("every array in `data` must share one leading (sample) axis.")
    (n,) = n
    if n < 1:
        raise ValueError("`data` is empty.")
    return n


class StepIndex(AbstractBatcher):
    """Batch = the step index (an int32 scalar): for key-only losses with a schedule in the
    step (e.g. annealing)."""

    def next(self, state, model, key, step):
        return step, state


class _KeyOnly(AbstractBatcher):
    def next(self, state, model, key, step):
        return None, state


# ----------------------------------------------------------------------------------------------
# the loop


def _all_finite(tree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if eqx.is_inexact_array(x)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _split_value(out):
    if isinstance(out, tuple) and len(out) == 2:
        return out
    return out, None


def _partition(model, filter_spec):
    if callable(filter_spec) and not isinstance(filter_spec, eqx.Module):
        spec = jax.tree.map(filter_spec, model)
    else:
        spec = filter_spec
    # only inexact arrays can train, whatever the spec says
    spec = jax.tree.map(lambda s, x: bool(s) and eqx.is_inexact_array(x), spec, model)
    return eqx.partition(model, spec)


def _loop(
    params,
    static,
    key,
    bar_id,
    *,
    loss,
    optimizer,
    batcher,
    num_steps,
    ema_decay,
    validation,
    eval_every,
    patience,
    every,
):
    """The scan. Returns `(last, ema_or_None, best_or_None, outputs)`."""
    dtype = jnp.result_type(float)
    k_init, k_steps = jax.random.split(key)
    bstate = batcher.init(k_init)
    opt_state = optimizer.init(params)
    ema = params if ema_decay is not None else None
    has_val = validation is not None
    best = params if has_val else None
    best_val = jnp.array(jnp.inf, dtype)
    bad = jnp.array(0)
    stopped = jnp.array(False)

    def objective(p, batch, k):
        return _split_value(loss(eqx.combine(p, static), batch, key=k))

    def take_step(args):
        params, opt_state, ema, bstate, i, k = args
        k_batch, k_loss, k_after = jax.random.split(k, 3)
        model = eqx.combine(params, static)
        batch, bstate = batcher.next(bstate, model, k_batch, i)
        (value, aux), grads = jax.value_and_grad(objective, has_aux=True)(params, batch, k_loss)
        ok_grad = jnp.isfinite(value) & _all_finite(grads)
        grads = jax.tree.map(lambda g: jnp.where(ok_grad, g, jnp.zeros_like(g)), grads)
        updates, new_opt = optimizer.update(grads, opt_state, params)
        new_params = eqx.apply_updates(params, updates)
        ok = ok_grad & _all_finite(new_params)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        params, opt_state = keep((new_params, new_opt), (params, opt_state))
        if ema is not None:
            assert ema_decay is not None  # ema exists only with a decay
            n = i.astype(dtype)
            d = jnp.minimum(ema_decay, (1.0 + n) / (10.0 + n))
            new_ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
            ema = keep(new_ema, ema)
        bstate = batcher.update(bstate, eqx.combine(params, static), aux, k_after)
        return params, opt_state, ema, bstate, jnp.asarray(value, dtype), aux, ok

    aux_shape = None

    def body(carry, inputs):
        params, opt_state, ema, bstate, best, best_val, bad, stopped = carry
        i, k = inputs
        was_stopped = stopped
        args = (params, opt_state, ema, bstate, i, k)
        if patience is None:
            params, opt_state, ema, bstate, value, aux, ok = take_step(args)
        else:

            def skip(args):
                params, opt_state, ema, bstate, _, _ = args
                aux = jax.tree.map(
                    lambda s: (
                        jnp.full(s.shape, jnp.nan, s.dtype)
                        if jnp.issubdtype(s.dtype, jnp.inexact)
                        else jnp.zeros(s.shape, s.dtype)
                    ),
                    aux_shape,
                )
                return (
                    params,
                    opt_state,
                    ema,
                    bstate,
                    jnp.array(jnp.nan, dtype),
                    aux,
                    jnp.array(True),
                )

            params, opt_state, ema, bstate, value, aux, ok = jax.lax.cond(
                stopped, skip, take_step, args
            )
        if has_val:
            current = ema if ema is not None else params
            evaluate = (~stopped) & (((i + 1) % eval_every == 0) | (i + 1 == num_steps))
            v = jax.lax.cond(
                evaluate,
                lambda: jnp.asarray(validation(eqx.combine(current, static)), dtype),
                lambda: jnp.array(jnp.nan, dtype),
            )
            improved = evaluate & (v < best_val)
            best = jax.tree.map(lambda a, b: jnp.where(improved, a, b), current, best)
            best_val = jnp.where(improved, v, best_val)
            bad = jnp.where(evaluate, jnp.where(improved, 0, bad + 1), bad)
            if patience is not None:
                stopped = stopped | (bad >= patience)
        else:
            v = jnp.array(jnp.nan, dtype)
        _progress.report(bar_id, i, num_steps, every, value)
        carry = (params, opt_state, ema, bstate, best, best_val, bad, stopped)
        return carry, (value, aux, ok, v, was_stopped)

    if patience is not None:
        # the aux structure, for the branch that skips steps after an early stop
        aux_shape = jax.eval_shape(
            lambda: take_step((params, opt_state, ema, bstate, jnp.array(0), k_steps))[5]
        )
    init = (params, opt_state, ema, bstate, best, best_val, bad, stopped)
    xs = (jnp.arange(num_steps), jax.random.split(k_steps, num_steps))
    carry, (values, aux, ok, vals, was_stopped) = jax.lax.scan(body, init, xs)
    params, _, ema, _, best, best_val, _, _ = carry
    taken = jnp.where(jnp.any(was_stopped), jnp.argmax(was_stopped), num_steps)
    ok = ok | was_stopped
    history = TrainHistory(
        losses=values,
        aux=aux,
        finite=ok,
        num_nonfinite=jnp.sum(~ok),
        num_steps_taken=taken,
        validation=vals if has_val else None,
    )
    return params, ema, (best, best_val), history


def check_optimizer(optimizer) -> None:
    """An optax `GradientTransformation` (init/update), else a `TypeError` naming `optimizer`."""
    if not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise TypeError(
            "`optimizer` must be an optax GradientTransformation (with init/update), got "
            f"{type(optimizer).__name__}."
        )


def _checked_options(optimizer, num_steps, ema_decay, batcher, eval_every, patience, validation):
    check_optimizer(optimizer)
    num_steps = check_count(num_steps, "num_steps")
    if ema_decay is not None:
        ema_decay = float(ema_decay)
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must lie in [0, 1) or be None, got {ema_decay}.")
    if batcher is None:
        batcher = _KeyOnly()
    elif not isinstance(batcher, AbstractBatcher):
        raise TypeError(
            f"`data` must be an AbstractBatcher (e.g. Minibatches) or None, got "
            f"{type(batcher).__name__}."
        )
    if patience is not None:
        patience = check_count(patience, "patience")
        if validation is None:
            raise ValueError("early stopping (`patience`) needs a `validation` loss.")
    eval_every = 1 if eval_every is None else check_count(eval_every, "eval_every")
    return num_steps, ema_decay, batcher, eval_every, patience


def train_loop(
    model,
    loss: Callable,
    data: AbstractBatcher | None = None,
    *,
    key: Key,
    optimizer,
    num_steps: int,
    filter_spec: Any = eqx.is_inexact_array,
    ema_decay: float | None = None,
    validation: Callable | None = None,
    eval_every: int | None = None,
    patience: int | None = None,
    return_best: bool = True,
    bar_id: Array | int = 0,
    every: int = 0,
):
    """[`train`][] without the jit boundary and the host-side warning: callable inside a traced
    function (e.g. one fit per SMC stage). Returns `(trained_model, TrainHistory)`."""
    num_steps, ema_decay, batcher, eval_every, patience = _checked_options(
        optimizer, num_steps, ema_decay, data, eval_every, patience, validation
    )
    params, static = _partition(model, filter_spec)
    params, ema, (best, best_val), history = _loop(
        params,
        static,
        key,
        bar_id,
        loss=loss,
        optimizer=optimizer,
        batcher=batcher,
        num_steps=num_steps,
        ema_decay=ema_decay,
        validation=validation,
        eval_every=eval_every,
        patience=patience,
        every=every,
    )
    chosen = ema if ema_decay is not None else params
    if validation is not None and return_best:
        chosen = jax.tree.map(lambda a, b: jnp.where(jnp.isfinite(best_val), a, b), best, chosen)
    return eqx.combine(chosen, static), history


# `train`'s compiled loop: the arrays of every argument are traced, the rest is static (hashed),
# so an equal configuration reuses it; it counts its traces (tests check a refit does not retrace)
_compiled = eqx.filter_jit(eqx.debug.assert_max_traces(train_loop, max_traces=None))


def train(
    model,
    loss: Callable,
    data: Any = None,
    *,
    key: Key,
    optimizer,
    num_steps: int,
    batch_size: int | None = None,
    filter_spec: Any = eqx.is_inexact_array,
    ema_decay: float | None = None,
    validation: Callable | None = None,
    eval_every: int | None = None,
    patience: int | None = None,
    return_best: bool = True,
    progress: bool = False,
    desc: str = "fit",
    warn_name: str | None = None,
) -> tuple[Any, TrainHistory]:
    """Minimise `loss(model, batch, *, key) -> (value, aux)` (or a bare scalar `value`) with an
    optax optimizer, in one compiled `lax.scan` over `num_steps` steps.

    **Arguments:**

    - `model`: any pytree (usually an `eqx.Module`).
    - `loss`: the objective; write it as an `eqx.Module` or a module-level function so that a
      second fit reuses the compiled loop (a closure made per call recompiles).
    - `data`: a dataset (a pytree of arrays with a leading sample axis: batches of
      `batch_size` rows in shuffled epochs, i.e. `Minibatches(data, batch_size)`), a
      [`Minibatches`][] or other [`AbstractBatcher`][], or `None` for a key-only loss (`batch`
      is then `None`).
    - `batch_size`: rows per batch when `data` is a dataset (ignored otherwise).
    - `key`: PRNG key; step `i` uses its own key, split into batch / loss / after-step keys.
    - `optimizer`: an optax `GradientTransformation` (reuse the same object to reuse the
      compiled loop).
    - `num_steps`: optimizer steps.
    - `filter_spec`: what trains: a pytree of bools shaped like `model`, or a function of a
      leaf (default `eqx.is_inexact_array`); only inexact arrays ever train.
    - `ema_decay`: keep an exponential moving average of the trained parameters and return it
      (`None`: off). Step `n` (from 0) uses `d = min(ema_decay, (1 + n) / (10 + n))`:
      `ema ← d·ema + (1 - d)·params` after the update, starting from the initial parameters.
    - `validation`: optional `validation(model) -> scalar`, evaluated every `eval_every` steps
      (default every step) and at the last; with `return_best` the best-scoring parameters
      are returned; `patience` stops after that many evaluations without improvement.
    - `progress`: draw a progress bar (`driftax._progress`; free when off); `desc` labels it.
    - `warn_name`: the name the non-finite warning gives the fit (default: `desc`).

    **Returns:** `(trained_model, TrainHistory)`. If any step was skipped as non-finite, a
    single `RuntimeWarning` is raised after the loop.
    """
    if data is not None and not isinstance(data, AbstractBatcher):
        if batch_size is None:
            raise ValueError("`batch_size` is needed to cut `data` into minibatches.")
        data = Minibatches(data, check_count(batch_size, "batch_size"))
    num_steps = check_count(num_steps, "num_steps")
    with _progress.progress_bar(num_steps, desc, progress) as (bar_id, every):
        start = time.perf_counter()
        trained, history = _compiled(
            model,
            loss,
            data,
            key=key,
            optimizer=optimizer,
            num_steps=num_steps,
            filter_spec=filter_spec,
            ema_decay=ema_decay,
            validation=validation,
            eval_every=eval_every,
            patience=patience,
            return_best=return_best,
            bar_id=_progress.bar_id_array(bar_id),
            every=every,
        )
        jax.block_until_ready((trained, history))
        wall = time.perf_counter() - start
    history = TrainHistory(
        losses=history.losses,
        aux=history.aux,
        finite=history.finite,
        num_nonfinite=int(history.num_nonfinite),
        num_steps_taken=int(history.num_steps_taken),
        validation=history.validation,
        wall_time=wall,
    )
    warn_nonfinite(history, desc if warn_name is None else warn_name)
    return trained, history


def train_subset(
    model, loss, data, filter_spec, key, optimizer, num_steps, progress, desc, **options
) -> tuple[Any, TrainHistory]:
    """[`train`][] with the arguments the flow front doors share (`fit_reverse_kl`, `fit_fab`,
    `fit_max_likelihood`, `fit_flow_matching`, `fit_stochastic_flow`): what trains
    (`filter_spec`), the front door's `key`, `optimizer`, `num_steps` and `progress`, the bar's
    label `desc`, and any other keyword of `train` in `options`."""
    options.update(key=key, optimizer=optimizer, num_steps=num_steps, filter_spec=filter_spec)
    return train(model, loss, data, progress=progress, desc=desc, **options)


def fit_losses(model, loss, batcher, key, optimizer, num_steps, ema_decay, progress, desc):
    """The tail every `(trained_model, losses)` fit front door shares (`fit`, `fit_bridge`,
    `fit_multimarginal`): [`train`][] on a ready batcher with the front door's `key`,
    `optimizer`, `num_steps`, `ema_decay` and `progress`, labelled `desc`; returns the trained
    model and the per-step losses."""
    args = (model, loss, batcher, eqx.is_inexact_array, key, optimizer, num_steps, progress, desc)
    trained, history = train_subset(*args, ema_decay=ema_decay)
    return trained, history.losses


def warn_nonfinite(history: TrainHistory, name: str, *, stacklevel: int = 3) -> None:
    """The one non-finite warning: a `RuntimeWarning` if any step taken was skipped."""
    bad = int(history.num_nonfinite)
    if bad:
        ok = np.asarray(history.finite)[: int(history.num_steps_taken)]
        first = int(np.argmin(ok))
        warnings.warn(
            f"{name}: {bad} of {ok.size} steps had a non-finite loss or gradient (first at "
            f"step {first}); they were skipped (parameters and optimizer state kept) and are "
            "marked in the history.",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
