"""`fit_sampler`: train a learned sampler of an energy, a thin front door on the shared loop."""

from __future__ import annotations

import warnings

import equinox as eqx
import jax
import optax

from ..._custom_types import Array
from ..._training import TrainHistory, check_count, train
from ...energies._base import AbstractEnergy
from ._buffer import LocalSearch
from ._core import AbstractDiffusionSampler, _check_energy
from ._losses import LOSSES, AdjointBuffer, AdjointLoss, PathLoss, ReplayBuffer
from ._pis import PIS

# one object, so that fits with the default optimizer share their compiled loop
DEFAULT_OPTIMIZER = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))


class _SamplerFitAux(eqx.Module):
    """Per-step diagnostics of [`fit_sampler`][] (the `aux` of its `TrainHistory`; each field
    also reads as an attribute of the history)."""

    elbo: Array
    log_normalizer: Array
    acceptance_rate: Array | None = None


def _trainable_spec(sampler):
    """Float arrays except the networks' fixed sinusoidal frequencies."""
    spec = jax.tree.map(eqx.is_inexact_array, sampler)
    frozen = [lambda s: s.control.frequencies]
    if getattr(sampler, "scale", None) is not None:
        frozen.append(lambda s: s.scale.frequencies)
    for where in frozen:
        spec = eqx.tree_at(where, spec, replace=False)
    return spec


def fit_sampler(
    sampler: AbstractDiffusionSampler,
    energy: AbstractEnergy,
    *,
    key,
    num_steps: int,
    optimizer: optax.GradientTransformation | None = None,
    batch_size: int = 256,
    loss: str = "log_variance",
    local_search: LocalSearch | None = None,
    num_updates: int = 1,
    buffer_size: int = 4096,
    progress: bool = False,
) -> tuple[AbstractDiffusionSampler, TrainHistory]:
    """Train a diffusion sampler ([`PIS`][], [`DDS`][], [`CMCD`][]) from the energy alone.

    Losses (one implementation each, shared by all samplers):

    - `"kl"`: the reverse KL `E_Q[-log w]` (= `KL(Q‖P) - log Z`), reparameterized through the
      simulated paths (gradients flow through every state).
    - `"log_variance"`: `Var[log w]` over detached paths (on-policy, plus buffer paths with
      `local_search`); mode-covering in practice and cheaper (no backpropagation through the
      dynamics' states).
    - `"adjoint"` ([`PIS`][] only, a memoryless point-mass start): Adjoint Sampling (Havens et
      al. 2025). Every `num_updates` steps, `batch_size` paths are simulated without
      gradients and their terminal states enter a FIFO buffer of `buffer_size` with the lean
      adjoint `∇g(x_K)` (`g = log N(·; 0, σ²T) - log p̃`); each step regresses the drift onto
      `-σ²∇g(x_K)` at Brownian-bridge points between 0 and buffer samples. Energy
      evaluations per step are `batch_size / num_updates`.

    The loop is the shared one (`driftax/_training.py`): one compiled scan; a step whose loss
    or gradient is non-finite is skipped (parameters and optimizer state kept), counted in
    the history's `num_nonfinite`, and one `RuntimeWarning` names the first.

    **Arguments:**

    - `sampler`, `energy`: the sampler and its target (event shape `(sampler.dim,)`).
    - `key`: PRNG key (keyword-only).
    - `num_steps`: optimizer steps (for `"adjoint"`: regression steps, `num_updates` per
      simulated batch).
    - `optimizer`: an optax optimizer (default `optax.chain(clip_by_global_norm(1), adam(1e-3))`).
    - `batch_size`: paths per step.
    - `loss`: `"kl"`, `"log_variance"` or `"adjoint"`.
    - `local_search`: a [`LocalSearch`][] (replay buffer + MCMC) for the log-variance loss;
      with `"adjoint"`, its kernel moves the terminal states before they enter the buffer
      (the adjoint loss keeps its own buffer of `buffer_size`).
    - `num_updates`, `buffer_size`: for `loss="adjoint"` (see above).
    - `progress`: draw a progress bar.

    **Returns:** `(trained_sampler, history)`: the shared loop's `TrainHistory` (`losses`,
    `finite`, `num_nonfinite`, `wall_time`, …) whose `aux` holds, per optimizer step, `elbo`
    (mean log-weight of the step's on-policy batch; for `loss="adjoint"`: of the latest
    simulated batch), `log_normalizer` (that batch's importance-sampling `log Z`) and
    `acceptance_rate` (mean local-search acceptance; `None` without `local_search`), each
    also readable as `history.elbo` etc.
    """
    _check_energy(sampler, energy)
    num_steps = check_count(num_steps, "num_steps")
    batch_size = check_count(batch_size, "batch_size")
    if loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {LOSSES}, got {loss!r}.")
    if local_search is not None:
        if not isinstance(local_search, LocalSearch):
            raise TypeError("`local_search` must be a LocalSearch or None.")
        if loss == "kl":
            raise ValueError(
                "`local_search` needs loss='log_variance' or 'adjoint' (off-policy paths)."
            )
        if batch_size < 2:
            raise ValueError("`batch_size` must be >= 2 with `local_search`.")
    num_updates = check_count(num_updates, "num_updates")
    buffer_size = check_count(buffer_size, "buffer_size")
    if loss == "adjoint" and not isinstance(sampler, PIS):
        raise ValueError(
            "`loss='adjoint'` needs a memoryless sampler with a point-mass start (PIS), got "
            f"{type(sampler).__name__}."
        )
    optimizer = DEFAULT_OPTIMIZER if optimizer is None else optimizer
    if loss == "adjoint":
        objective = AdjointLoss(energy, batch_size)
        size = max(buffer_size, batch_size)
        batches = AdjointBuffer(energy, local_search, sampler.dim, batch_size, size, num_updates)
    else:
        objective = PathLoss(energy, loss, batch_size, local_search)
        batches = None
        if local_search is not None:
            batches = ReplayBuffer(energy, local_search, sampler.dim, batch_size)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        trained, history = train(
            sampler,
            objective,
            batches,
            key=key,
            optimizer=optimizer,
            num_steps=num_steps,
            filter_spec=_trainable_spec(sampler),
            progress=progress,
            desc="fit_sampler",
        )
    for w in caught:  # re-raise here, pointing at the caller
        warnings.warn(w.message, w.category, stacklevel=2)
    _, lower, log_z, acc = history.aux
    aux = _SamplerFitAux(
        elbo=lower, log_normalizer=log_z, acceptance_rate=None if local_search is None else acc
    )
    return trained, eqx.tree_at(lambda h: h.aux, history, aux)
