"""`fit_sampler`: train a learned sampler of an energy, a thin front door on the shared loop."""

from __future__ import annotations

import math
import warnings

import equinox as eqx
import jax
import optax

from ..._custom_types import Array
from ..._training import StepIndex, TrainHistory, check_count, train
from ...energies._base import AbstractEnergy
from ._buffer import LocalSearch
from ._core import AbstractDiffusionSampler, _check_energy
from ._gflownet import LogFlow, balanced
from ._losses import BALANCE, LOSSES, OFF_POLICY, AdjointBuffer, AdjointLoss, PathLoss, ReplayBuffer
from ._pis import PIS

# one object, so that fits with the default optimizer share their compiled loop
DEFAULT_OPTIMIZER = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))


class _SamplerFitAux(eqx.Module):
    """Per-step diagnostics of [`fit_sampler`][] (the `aux` of its `TrainHistory`; each field
    also reads as an attribute of the history)."""

    elbo: Array
    log_normalizer: Array
    acceptance_rate: Array | None = None
    learned_log_normalizer: Array | None = None


def _trainable_spec(sampler):
    """Float arrays except the networks' fixed sinusoidal frequencies."""
    spec = jax.tree.map(eqx.is_inexact_array, sampler)
    frozen = [lambda s: s.control.frequencies]
    if getattr(sampler, "scale", None) is not None:
        frozen.append(lambda s: s.scale.frequencies)
    for where in frozen:
        spec = eqx.tree_at(where, spec, replace=False)
    return spec


def _balanced_spec(model):
    """The sampler's spec, the learned log Z, the log-flow's weights (not its frequencies)."""
    spec = jax.tree.map(eqx.is_inexact_array, model)
    spec = eqx.tree_at(lambda m: m.sampler, spec, _trainable_spec(model.sampler))
    if model.log_flow is not None:
        spec = eqx.tree_at(lambda m: m.log_flow.frequencies, spec, replace=False)
    return spec


def _check_exploration(value, loss: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"`exploration` must be a non-negative finite number, got {value!r}."
        ) from None
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"`exploration` must be a non-negative finite number, got {value!r}.")
    if v > 0 and loss not in OFF_POLICY:
        raise ValueError(
            f"`exploration` needs an off-policy loss {OFF_POLICY} (paths drawn from a widened "
            f"behaviour policy), not loss={loss!r}."
        )
    return v


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
    exploration: float = 0.0,
    subtrajectory_lambda: float = 0.9,
    forward_looking: bool = False,
    progress: bool = False,
) -> tuple[AbstractDiffusionSampler, TrainHistory]:
    """Train a diffusion sampler ([`PIS`][], [`DDS`][], [`CMCD`][]) from the energy alone.

    Losses (one implementation each, shared by all samplers):

    - `"kl"`: the reverse KL `E_Q[-log w]` (= `KL(Q‖P) - log Z`), reparameterized through the
      simulated paths (gradients flow through every state).
    - `"log_variance"`: `Var[log w]` over detached paths (on-policy, plus buffer paths with
      `local_search`); mode-covering in practice and cheaper (no backpropagation through the
      dynamics' states). This is VarGrad (Richter et al. 2020; Sendera et al.'s "VarGrad":
      trajectory balance with `log Z` replaced by the batch mean of `log w`); `"vargrad"` is
      the same loss under that name.
    - `"trajectory_balance"` (GFlowNet TB): `mean (log Z_θ - log w)²` over detached paths,
      with a learned scalar `log Z_θ` trained alongside the sampler (it moves
      `_gflownet.LOG_Z_SPEED` = 100 times faster than a network weight under Adam); at the
      optimum `log Z_θ = log Z` and every path weight equals `Z`.
    - `"subtrajectory_balance"` (GFlowNet SubTB): the balance of every sub-path `i < j`,
      `log F_i(x_i) - log F_j(x_j) = Σ_{i<=k<j} (log P_B - log P_F)`, squared and weighted by
      `subtrajectory_lambda^(j-i)` (normalized per path), with a learned log-flow network
      `F(t, x)` in between the boundary flows `log F_0 = log Z_θ + log q_0(x_0)` and
      `log F_K = log p̃(x_K)`. With `forward_looking=True` this is FL-SubTB (Zhang et al.
      2023, "DGFS"; Sendera et al. 2024): the interior log-flow is the network plus the known
      interpolation `(k/K) log p̃(x) + (1 - k/K) log r_k(x)` between the reference process's
      marginal `r_k` (`sampler.reference_log_density`) and the target, so the network only
      learns a residual; it costs `K - 1` more energy evaluations per path.
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
    - `exploration`: off-policy exploration `σ_e >= 0` for the off-policy losses
      (`"log_variance"`/`"vargrad"`, `"trajectory_balance"`, `"subtrajectory_balance"`): the
      training paths are drawn from the forward kernels with their variance widened by
      `σ_e²`, `σ_e` annealed linearly to 0 over the `num_steps` steps, and scored by the
      model's own kernels (the losses keep their minimiser; the reverse KL does not, and
      raises).
    - `subtrajectory_lambda`: the λ of `"subtrajectory_balance"` (positive).
    - `forward_looking`: FL-SubTB (`"subtrajectory_balance"` only; see above).
    - `progress`: draw a progress bar.

    **Returns:** `(trained_sampler, history)`: the shared loop's `TrainHistory` (`losses`,
    `finite`, `num_nonfinite`, `wall_time`, …) whose `aux` holds, per optimizer step, `elbo`
    (mean log-weight of the step's on-policy batch; for `loss="adjoint"`: of the latest
    simulated batch), `log_normalizer` (that batch's importance-sampling `log Z`) and
    `acceptance_rate` (mean local-search acceptance; `None` without `local_search`) and
    `learned_log_normalizer` (the learned `log Z_θ` for the balance losses, else `None`),
    each also readable as `history.elbo` etc.
    """
    _check_energy(sampler, energy)
    num_steps = check_count(num_steps, "num_steps")
    batch_size = check_count(batch_size, "batch_size")
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {LOSSES}, got {loss!r}.")
    if loss == "vargrad":
        loss = "log_variance"  # the same loss (see above)
    explore = _check_exploration(exploration, loss)
    lam = float(subtrajectory_lambda)
    if not (math.isfinite(lam) and lam > 0):
        raise ValueError(
            f"`subtrajectory_lambda` must be a positive finite number, got {subtrajectory_lambda!r}."
        )
    if not isinstance(forward_looking, bool):
        raise TypeError(f"`forward_looking` must be a bool, got {forward_looking!r}.")
    if forward_looking and loss != "subtrajectory_balance":
        raise ValueError(
            f"`forward_looking=True` is FL-SubTB: it needs loss='subtrajectory_balance', got {loss!r}."
        )
    if local_search is not None:
        if not isinstance(local_search, LocalSearch):
            raise TypeError("`local_search` must be a LocalSearch or None.")
        if loss == "kl":
            raise ValueError(
                "`local_search` needs an off-policy loss (log_variance/vargrad, "
                "trajectory_balance, subtrajectory_balance) or 'adjoint'."
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
        dtype = jax.numpy.result_type(float)
        objective = PathLoss(
            energy,
            loss,
            batch_size,
            local_search,
            # traced (0 for none): fits that differ only in σ_e share the compiled loop
            exploration=jax.numpy.asarray(explore, dtype) if loss in OFF_POLICY else None,
            anneal_steps=num_steps,
            subtrajectory_lambda=lam,
            forward_looking=forward_looking,
        )
        batches = StepIndex()
        if local_search is not None:
            batches = ReplayBuffer(energy, local_search, sampler.dim, batch_size)
    model, spec = sampler, None
    if loss in BALANCE:
        flow = None
        if loss == "subtrajectory_balance":
            key, k_flow = jax.random.split(key)
            width = sampler.control.first.weight.shape[0]  # the control network's width
            flow = LogFlow(sampler.dim, key=k_flow, hidden=int(width))
        model = balanced(sampler, 0.0, flow)
        spec = _balanced_spec(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        trained, history = train(
            model,
            objective,
            batches,
            key=key,
            optimizer=optimizer,
            num_steps=num_steps,
            filter_spec=_trainable_spec(sampler) if spec is None else spec,
            progress=progress,
            desc="fit_sampler",
        )
    for w in caught:  # re-raise here, pointing at the caller
        warnings.warn(w.message, w.category, stacklevel=2)
    if loss in BALANCE:
        trained = trained.sampler
    _, lower, log_z, acc, learned = history.aux
    aux = _SamplerFitAux(
        elbo=lower,
        log_normalizer=log_z,
        acceptance_rate=None if local_search is None else acc,
        learned_log_normalizer=learned if loss in BALANCE else None,
    )
    return trained, eqx.tree_at(lambda h: h.aux, history, aux)
