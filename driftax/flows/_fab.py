"""FAB: flow annealed importance sampling bootstrap (Midgley et al. 2023).

The flow `q` is trained to minimise the α-divergence `D_α(p‖q)` (α = 2 by default) from AIS
samples: AIS starts at the flow and anneals (HMC moves) towards `g_α ∝ p^α q^{1-α}`, the
minimum-variance importance target for `D_α`'s gradient (`p²/q` at α = 2). With normalised AIS
weights `w̄_i`, the surrogate loss `-Σ_i w̄_i log q_θ(x_i)` (samples and weights not
differentiated) has gradient `-E_{g_α}[∇ log q] = ∇ log ∫ p^α q^{1-α} / (α - 1)`, a positive
multiple of `∇ D_α` for α > 1 (for α = 1, the forward KL's gradient).

The AIS is the library's one AIS (`driftax.samplers.AIS` / `SMC`, its compiled core called
inside the training scan with the current flow as the reference); training runs on the shared
loop (`driftax/_training.py`) with a batcher that runs the AIS and holds the optional
prioritized replay buffer.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Key
from .._training import AbstractBatcher, check_count, train_subset
from ..energies._base import AbstractEnergy
from ..samplers._adaptation import WindowAdaptation
from ..samplers._base import AbstractStepSizeSampler
from ..samplers._hamiltonian import HMC
from ..samplers._smc import SMC, smc_one_run
from ._distribution import Flow
from ._train import _flow_spec, _log_densities, check_flow_and_energy

# ----------------------------------------------------------------------------------------------
# the AIS target and one AIS run from the flow


class _AlphaTarget(AbstractEnergy):
    """`α log p(x) + (1 - α) log q(x)`: the AIS target `p^α q^{1-α}` (the flow not trained)."""

    energy: AbstractEnergy
    flow: Flow
    alpha: float = eqx.field(static=True)

    def __init__(self, energy: AbstractEnergy, flow: Flow, alpha: float):
        self.energy, self.flow, self.alpha = energy, flow, alpha

    @property
    def event_shape(self):
        return self.energy.event_shape

    def log_density(self, x):
        return self.alpha * self.energy.log_density(x) + (1.0 - self.alpha) * self.flow.log_density(
            x
        )


class _AISDraws(eqx.Module):
    x: Array  # (n, *event_shape); dropped draws set to 0
    log_weights: Array  # unnormalised per-trajectory log weights for p^α q^{1-α}; dropped: -inf
    log_q: Array  # the flow's log density at x (the flow that started the AIS)
    num_nonfinite: Array  # draws dropped for a non-finite weight, position or log q
    num_energy_evals: Array  # target evaluations of the run (with or without gradient)
    step_size: Array  # the kernel's step size after the run (adapted if the AIS adapts)


def fab_ais(ais: SMC, flow: Flow, energy: AbstractEnergy, alpha: float, key: Key, n: int):
    """One AIS run of `n` trajectories from `flow` towards `energy^α flow^{1-α}` (traceable).

    Returns an `_AISDraws`. The per-trajectory weights are unbiased for `∫ p^α q^{1-α}`: their
    mean estimates it and `mean(w · (q/p)^{α-1})` estimates `Z = ∫ p̃`.
    """
    flow = jax.lax.stop_gradient(flow)
    target = _AlphaTarget(energy, flow, alpha)
    out = smc_one_run(ais, target, flow, key, n)
    x = out.samples
    # per-trajectory weights: normalised weights · n · Ẑ
    log_w = out.log_weights + jnp.log(n) + out.log_normalizer.value
    log_q = _log_densities(flow, x)
    bad = ~(jnp.isfinite(log_w) & jnp.isfinite(log_q))
    bad = bad | ~jnp.all(jnp.isfinite(x.reshape(n, -1)), axis=1)
    x = jnp.where(bad.reshape((n,) + (1,) * (x.ndim - 1)), 0.0, x)
    log_w = jnp.where(bad, -jnp.inf, log_w)
    log_q = jnp.where(bad, 0.0, log_q)
    steps = out.extras["step_size"]
    last = jnp.maximum(out.extras["num_stages"] - 1, 0)
    kernel = ais.kernel
    step = kernel.step_size if isinstance(kernel, AbstractStepSizeSampler) else jnp.nan
    new_step = jnp.where(jnp.isfinite(steps[last]), steps[last], step)
    return _AISDraws(
        x=x,
        log_weights=log_w,
        log_q=log_q,
        num_nonfinite=jnp.sum(bad).astype(jnp.int32),
        num_energy_evals=jnp.asarray(out.num_energy_evals),
        step_size=jnp.asarray(new_step),
    )


def fab_loss(flow: Flow, x: Array, log_weights: Array) -> Array:
    """The FAB surrogate `-Σ_i w̄_i log q(x_i)`, `w̄ = softmax(log_weights)` (not
    differentiated): draws with a non-finite log weight get weight zero (never averaged)."""
    log_weights = jnp.where(jnp.isfinite(log_weights), log_weights, -jnp.inf)
    w = jax.lax.stop_gradient(jax.nn.softmax(log_weights))
    log_q = _log_densities(flow, jax.lax.stop_gradient(x))
    return -jnp.sum(jnp.where(w > 0, w * log_q, 0.0))


# ----------------------------------------------------------------------------------------------
# the batcher (AIS every step, optional prioritized replay buffer) and the loss


class _Buffer(eqx.Module):
    x: Array  # (size, *event_shape)
    log_weights: Array  # AIS log weights for p^α q^{1-α}, adjusted as the flow changes
    log_q: Array  # the flow's log density when the weight was last adjusted
    head: Array  # next slot to overwrite (FIFO)


class _State(eqx.Module):
    buffer: _Buffer | None
    step_size: Array
    last_idx: Array  # the buffer rows of the last batch (their weights are adjusted after it)


class _Aux(eqx.Module):
    num_nonfinite: Array
    num_energy_evals: Array
    ess: Array  # Kish ESS of the step's AIS weights / batch_size
    step_size: Array


class _FABBatches(AbstractBatcher):
    energy: AbstractEnergy
    ais: SMC
    alpha: float = eqx.field(static=True)
    batch_size: int = eqx.field(static=True)
    initial_buffer: _Buffer | None
    initial_step_size: Array

    def init(self, key):
        del key
        return _State(
            self.initial_buffer,
            self.initial_step_size,
            jnp.zeros((self.batch_size,), jnp.int32),
        )

    def _ais(self, state, model, key):
        ais = self.ais
        if isinstance(ais.kernel, AbstractStepSizeSampler):
            ais = eqx.tree_at(lambda a: a.kernel.step_size, ais, state.step_size)
        return fab_ais(ais, model, self.energy, self.alpha, key, self.batch_size)

    def next(self, state, model, key, step):
        k_ais, k_pick = jax.random.split(key)
        draws = self._ais(state, model, k_ais)
        lw = draws.log_weights
        ess = jnp.exp(2 * jax.nn.logsumexp(lw) - jax.nn.logsumexp(2 * lw)) / self.batch_size
        aux = _Aux(draws.num_nonfinite, draws.num_energy_evals, ess, state.step_size)
        buf = state.buffer
        if buf is None:
            return (draws.x, draws.log_weights, aux), eqx.tree_at(
                lambda s: s.step_size, state, draws.step_size
            )
        size = buf.log_weights.shape[0]
        rows = (buf.head + jnp.arange(self.batch_size)) % size
        buf = _Buffer(
            x=buf.x.at[rows].set(draws.x),
            log_weights=buf.log_weights.at[rows].set(draws.log_weights),
            log_q=buf.log_q.at[rows].set(draws.log_q),
            head=(buf.head + self.batch_size) % size,
        )
        idx = jax.random.categorical(k_pick, buf.log_weights, shape=(self.batch_size,))
        uniform = jnp.zeros((self.batch_size,), buf.log_weights.dtype)
        batch = (buf.x[idx], uniform, aux)
        return batch, _State(buf, draws.step_size, idx.astype(jnp.int32))

    def update(self, state, model, aux, key):
        """Adjust the weights of the rows just used: `log w += (1-α)(log q_new - log q_old)`."""
        del aux, key
        buf = state.buffer
        if buf is None:
            return state
        idx = state.last_idx
        log_q_new = _log_densities(model, buf.x[idx])
        log_q_new = jnp.where(jnp.isfinite(buf.log_weights[idx]), log_q_new, buf.log_q[idx])
        shift = (1.0 - self.alpha) * (log_q_new - buf.log_q[idx])
        lw = buf.log_weights[idx] + jnp.where(jnp.isfinite(shift), shift, -jnp.inf)
        buf = eqx.tree_at(
            lambda b: (b.log_weights, b.log_q),
            buf,
            (buf.log_weights.at[idx].set(lw), buf.log_q.at[idx].set(log_q_new)),
        )
        return eqx.tree_at(lambda s: s.buffer, state, buf)


class _FABLoss(eqx.Module):
    def __call__(self, flow, batch, *, key):
        del key
        x, log_w, aux = batch
        return fab_loss(flow, x, log_w), aux


# ----------------------------------------------------------------------------------------------
# the front door


def default_ais(step_size: float = 0.1) -> SMC:
    """FAB's default AIS: 2 intermediate distributions (the linear schedule 0, 1/3, 2/3, 1),
    one HMC move of 5 leapfrog steps each, step size adapted across the
    population and carried from training step to training step."""
    return SMC(
        HMC(step_size=step_size, num_integration_steps=5),
        schedule=jnp.linspace(0.0, 1.0, 4),
        num_mcmc_steps=1,
        resampling="never",
        target_acceptance=0.65,
    )


def _check_ais(ais, event_shape) -> SMC:
    if ais is None:
        return default_ais()
    if not isinstance(ais, SMC):
        raise TypeError(
            f"`ais` must be a driftax.samplers.AIS (an SMC instance), got {type(ais).__name__}."
        )
    if ais.transport is not None:
        raise ValueError("`ais` must not have a `transport` (FAB anneals from the flow itself).")
    if ais.reference is not None:
        raise ValueError("`ais` must not set a `reference`: FAB starts every run at the flow.")
    if ais.adapt_metric:
        kernel = WindowAdaptation(metric="diagonal").prepare(ais.kernel, event_shape)
        ais = eqx.tree_at(lambda a: a.kernel, ais, kernel)
    return ais


def fit_fab(
    flow: Flow,
    energy: AbstractEnergy,
    *,
    key: Key,
    optimizer,
    num_steps: int,
    batch_size: int,
    alpha: float = 2.0,
    ais: SMC | None = None,
    buffer_size: int | None = None,
    train_base: bool = False,
    progress: bool = False,
) -> tuple[Flow, dict[str, Array]]:
    """Fit a flow to an unnormalised energy with FAB, flow annealed importance sampling
    bootstrap (Midgley et al. 2023): minimise the α-divergence `D_α(p‖q)` with AIS samples
    drawn from the flow and annealed towards `p^α q^{1-α}` (`p²/q` at the default α = 2).

    Every step runs one AIS of `batch_size` trajectories from the current flow (the library's
    `driftax.samplers.AIS`, HMC moves by default) and takes one optimizer step on the
    surrogate `-Σ_i w̄_i log q(x_i)` (normalised AIS weights `w̄`, not differentiated), whose
    gradient is `∇ log ∫ p^α q^{1-α} / (α - 1)`. The flow is mass-covering: it is trained
    towards where `p` has mass, not only where the flow already is.

    **Arguments:**

    - `flow`: the [`Flow`][] to train (it needs a cheap inverse *and* forward pass: a coupling
      flow). `energy`: the target, with the flow's event shape.
    - `key`, `optimizer`, `num_steps`, `batch_size`, `train_base`, `progress`: as for
      [`fit_reverse_kl`][] (`batch_size` AIS trajectories per step, and the loss batch).
    - `alpha`: the divergence's α, at least 1 (α = 1: the forward KL with AIS towards `p`;
      α = 2: the paper's choice, the target `p²/q` of minimum importance variance).
    - `ais`: the AIS settings, an `driftax.samplers.AIS` (or `SMC`)
      without `reference` or `transport`: kernel, `schedule`, `num_mcmc_steps`, step-size
      adaptation. Default: 2 intermediate distributions, one 5-step HMC move each, step size
      adapted and carried from step to step (`default_ais`).
    - `buffer_size`: the prioritized replay buffer (`None`: off). The buffer holds
      `buffer_size` AIS draws with their log weights; it is filled with AIS from the initial
      flow, every step adds the new AIS draws in place of the oldest, the loss batch is drawn
      from the buffer with probability ∝ weight, and the weights of the drawn rows are adjusted
      as the flow changes (`log w += (1-α)(log q_new - log q_old)`). Must be at least
      `batch_size`.

    **Returns:** `(trained_flow, losses)`: `losses["train"]` the surrogate per step;
    `losses["ais_ess"]` the Kish ESS fraction of each step's AIS weights;
    `losses["num_nonfinite_weights"]` AIS draws dropped per step for a non-finite weight or
    position (dropped, counted, never averaged); `losses["num_energy_evals"]` the target
    evaluations per step (the buffer's initial fill is `losses["buffer_fill_energy_evals"]`);
    `losses["step_size"]` the AIS kernel's step size used at each step.
    """
    check_flow_and_energy(flow, energy, "fit_fab")
    if flow.bijection.stochastic_log_det:
        raise ValueError("fit_fab needs an exact log density (not a Hutchinson CNF).")
    batch_size = check_count(batch_size, "batch_size")
    if batch_size < 2:
        raise ValueError(f"`batch_size` must be at least 2 (AIS trajectories), got {batch_size}.")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)):
        raise TypeError(f"`alpha` must be a float, got {type(alpha).__name__}.")
    alpha = float(alpha)
    if not (math.isfinite(alpha) and alpha >= 1.0):
        raise ValueError(
            f"`alpha` must be a finite float >= 1 (2 is FAB's choice; 1 the forward KL), got {alpha!r}."
        )
    ais = _check_ais(ais, energy.event_shape)
    k_fill, k_loop = jax.random.split(key)
    step0 = ais.kernel.step_size if isinstance(ais.kernel, AbstractStepSizeSampler) else jnp.nan
    step0 = jnp.asarray(step0, jnp.result_type(float))
    buffer = None
    fill_evals = 0
    if buffer_size is not None:
        buffer_size = check_count(buffer_size, "buffer_size")
        if buffer_size < batch_size:
            raise ValueError(
                f"`buffer_size` ({buffer_size}) must be at least `batch_size` ({batch_size})."
            )
        draws = _fill(ais, flow, energy, alpha, k_fill, buffer_size)
        buffer = _Buffer(draws.x, draws.log_weights, draws.log_q, jnp.zeros((), jnp.int32))
        fill_evals = int(draws.num_energy_evals)
        step0 = draws.step_size
    batches = _FABBatches(energy, ais, alpha, batch_size, buffer, step0)
    spec = _flow_spec(flow, train_base)
    trained, history = train_subset(
        flow, _FABLoss(), batches, spec, k_loop, optimizer, num_steps, progress, "fit_fab"
    )
    aux = history.aux
    out = {
        "train": history.losses,
        "ais_ess": aux.ess,
        "num_nonfinite_weights": aux.num_nonfinite,
        "num_energy_evals": aux.num_energy_evals,
        "step_size": aux.step_size,
    }
    if buffer is not None:
        out["buffer_fill_energy_evals"] = jnp.asarray(fill_evals)
    return trained, out


@eqx.filter_jit
def _fill(ais, flow, energy, alpha, key, n):
    return fab_ais(ais, flow, energy, alpha, key, n)
