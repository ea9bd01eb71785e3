"""Flow-assisted MCMC: NeuTra (any sampler in the flow's latent space), independent
Metropolis–Hastings and iterated SIR with a flow proposal, and a global/local hybrid
(flow proposals interleaved with a local kernel such as MALA).

All are `driftax.samplers.AbstractSampler`s, so `driftax.sample` runs them (many chains, one
compiled loop, diagnostics). The accept/reject step is the samplers' shared
`metropolis_hastings`. Exactness does not depend on the flow's quality: a poor flow only slows
mixing (Grenioux et al., 2023).

A proposal with a non-finite target log density (NaN, +∞ or -∞) or flow log density is never
accepted and is counted divergent. States keep the dtype of the starting point (the flow's
draws and densities are cast to it).
"""

from __future__ import annotations

from typing import cast

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Key
from ..energies._base import AbstractEnergy, check_event
from ..energies._compose import PullBack
from ..samplers._base import (
    AbstractSampler,
    Info,
    MCMCState,
    cast_like,
    check_int,
    init_position,
    log_density_at,
    safe_energy_error,
    value_and_score_at,
)
from ..samplers._mh import metropolis_hastings
from ._bijection import AbstractBijection
from ._distribution import Flow


def _check_flow(flow) -> Flow:
    if not isinstance(flow, Flow):
        raise TypeError(f"`flow` must be a driftax.flows.Flow, got {type(flow).__name__}.")
    if flow.cond_shape is not None:
        raise ValueError("flow-MCMC needs an unconditional flow.")
    return flow


def _check_shapes(flow: Flow, energy: AbstractEnergy):
    if tuple(energy.event_shape) != tuple(flow.event_shape):
        raise ValueError(
            f"the energy's event shape {tuple(energy.event_shape)} must equal the flow's "
            f"{tuple(flow.event_shape)}."
        )


class FlowState(eqx.Module):
    """State of a flow-proposal chain: `position`, the target's `log_density` there, the
    proposal's `proposal_log_density = log q(position)`, and (for hybrids) the `score`."""

    position: Array
    log_density: Array
    proposal_log_density: Array
    score: Array | None = None


def neutra(flow: Flow | AbstractBijection, energy: AbstractEnergy) -> PullBack:
    """The NeuTra energy: `energy` pulled back through the flow's bijection `T`,
    `log p_z(z) = log p(T(z)) + log|det ∂T/∂z|`.

    Run any sampler on it (e.g. `driftax.sample(HMC(...), neutra(flow, energy), z0, ...)`,
    with adaptation) and map the draws back with `jax.vmap(pulled.push_forward)`. With HMC on a
    lattice field this is flow-transformed HMC (Foreman et al.). See also [`NeuTra`][].
    """
    bij = flow.bijection if isinstance(flow, Flow) else flow
    if not isinstance(bij, AbstractBijection):
        raise TypeError(
            f"`flow` must be a Flow or an AbstractBijection, got {type(flow).__name__}."
        )
    if tuple(bij.event_shape) != tuple(energy.event_shape):
        raise ValueError(
            f"the energy's event shape {tuple(energy.event_shape)} must equal the bijection's "
            f"{tuple(bij.event_shape)}."
        )
    return PullBack(energy, bij)


class NeuTraState(eqx.Module):
    """State of a [`NeuTra`][] chain: the data-space `position` and `log_density`, and the inner
    sampler's `latent` state."""

    position: Array
    log_density: Array
    latent: eqx.Module


class NeuTra(AbstractSampler):
    """Run `inner` (any sampler) on the energy pulled back through `bijection` (Hoffman et al.
    2019), reporting positions in data space, so `driftax.sample` records target-space draws.

    The inner sampler's hyperparameters are used as given (warmup is burn-in only); to adapt
    them, run `driftax.sample` on [`neutra`][]`(flow, energy)` directly. With `HMC` this is
    flow-transformed HMC.
    """

    inner: AbstractSampler
    bijection: AbstractBijection

    def __init__(self, inner: AbstractSampler, bijection: Flow | AbstractBijection):
        if not isinstance(inner, AbstractSampler):
            raise TypeError(f"`inner` must be an AbstractSampler, got {type(inner).__name__}.")
        bij = bijection.bijection if isinstance(bijection, Flow) else bijection
        if not isinstance(bij, AbstractBijection):
            raise TypeError(
                "`bijection` must be a Flow or an AbstractBijection, got "
                f"{type(bijection).__name__}."
            )
        self.inner = inner
        self.bijection = bij

    def init(self, energy: AbstractEnergy, x0: Array) -> NeuTraState:
        x0 = check_event(x0, energy.event_shape, "x0")
        bijection = cast_like(x0, self.bijection)
        pulled = neutra(bijection, energy)
        z0 = bijection.inverse(x0)
        latent = self.inner.init(pulled, z0)
        return NeuTraState(position=x0, log_density=log_density_at(energy, x0), latent=latent)

    def step(self, energy: AbstractEnergy, state: NeuTraState, *, key: Key):
        # the inner kernel rejects non-finite latent log densities (it is a kernel like any
        # other); the data-space point of a finite latent state is finite
        bijection = cast_like(state.position, self.bijection)
        pulled = neutra(bijection, energy)
        latent, info = self.inner.step(pulled, state.latent, key=key)
        x = bijection.transform(latent.position)
        return NeuTraState(position=x, log_density=log_density_at(energy, x), latent=latent), info


def _flow_log_density(flow: Flow, x: Array) -> Array:
    """`log q(x)` in the dtype of `x` (the flow is cast to it; a no-op when they agree)."""
    return cast_like(x, cast_like(x, flow).log_density(x))


def _init_flow_state(flow: Flow, energy: AbstractEnergy, x0, with_score: bool) -> FlowState:
    _check_shapes(flow, energy)
    x0, logp, score = init_position(energy, x0, with_score=with_score)
    return FlowState(
        position=x0,
        log_density=logp,
        proposal_log_density=_flow_log_density(flow, x0),
        score=score,
    )


class IndependentMH(AbstractSampler):
    """Independent Metropolis–Hastings with a flow proposal: propose `x' ~ q`, accept with
    probability `min(1, w(x') / w(x))`, `w = p̃ / q`. Gradient-free; one flow draw per step."""

    flow: Flow

    def __init__(self, flow: Flow):
        self.flow = _check_flow(flow)

    def init(self, energy: AbstractEnergy, x0: Array) -> FlowState:
        return _init_flow_state(self.flow, energy, x0, with_score=False)

    def step(self, energy: AbstractEnergy, state: FlowState, *, key: Key):
        return _imh_step(self.flow, energy, state, key, with_score=False)


def _imh_step(flow, energy, state, key, with_score):
    k_prop, k_mh = jax.random.split(key)
    # the position's dtype decides: the flow is cast to it (a no-op when they agree)
    x = state.position
    y, log_q = cast_like(x, cast_like(x, flow).sample_and_log_density(k_prop))
    if with_score:
        log_p, score = value_and_score_at(energy, y)
    else:
        log_p, score = log_density_at(energy, y), None
    proposal = FlowState(position=y, log_density=log_p, proposal_log_density=log_q, score=score)
    log_ratio = (log_p - log_q) - (state.log_density - state.proposal_log_density)
    # NaN, +inf and -inf log densities (target or flow) and non-finite draws or scores are
    # divergent: never accepted
    valid = jnp.isfinite(log_p) & jnp.isfinite(log_q) & jnp.all(jnp.isfinite(y))
    if with_score:
        valid = valid & jnp.all(jnp.isfinite(cast(Array, score)))
    new, acc, _, div = metropolis_hastings(log_ratio, proposal, state, key=k_mh, valid=valid)
    info = Info(
        acceptance_rate=acc,
        is_divergent=div,
        energy_error=safe_energy_error(-log_ratio),
        num_grad_evals=jnp.asarray(1 if with_score else 0, jnp.int32),
    )
    return new, info


class ISIR(AbstractSampler):
    """Iterated sampling–importance resampling (i-SIR; Andrieu et al. 2010, Grenioux et al.
    2023): draw `num_proposals - 1` flow samples, and move to one of them or stay, with
    probabilities proportional to the importance weights `p̃ / q` of all `num_proposals`
    candidates (the current state included). Exact for any flow; gradient-free.

    `acceptance_rate` reports the probability of leaving the current state. A candidate with a
    non-finite target or flow log density (NaN, +∞ or -∞) gets weight 0 (it is never chosen);
    the step is then counted divergent, and `extras["num_nonfinite"]` says how many there were.
    """

    flow: Flow
    num_proposals: int = eqx.field(static=True)

    def __init__(self, flow: Flow, num_proposals: int = 16):
        self.flow = _check_flow(flow)
        if isinstance(num_proposals, bool) or not isinstance(num_proposals, int):
            raise ValueError(f"`num_proposals` must be an int >= 2, got {num_proposals!r}.")
        self.num_proposals = check_int(num_proposals, "num_proposals", 2)

    def init(self, energy: AbstractEnergy, x0: Array) -> FlowState:
        return _init_flow_state(self.flow, energy, x0, with_score=False)

    def step(self, energy: AbstractEnergy, state: FlowState, *, key: Key):
        k_prop, k_sel = jax.random.split(key)
        flow = cast_like(state.position, self.flow)
        ys, log_qs = cast_like(
            state.position, flow.sample_and_log_density(k_prop, (self.num_proposals - 1,))
        )
        log_ps = jax.vmap(lambda y: log_density_at(energy, y))(ys)
        log_w = log_ps - log_qs
        finite = (
            jnp.isfinite(log_ps)
            & jnp.isfinite(log_qs)
            & jnp.all(jnp.isfinite(ys.reshape(ys.shape[0], -1)), axis=1)
        )
        log_w = jnp.where(finite, log_w, -jnp.inf)
        log_w0 = state.log_density - state.proposal_log_density
        all_log_w = jnp.concatenate([log_w0[None], log_w])
        idx = jax.random.categorical(k_sel, all_log_w)
        probs = jax.nn.softmax(all_log_w)
        cands = FlowState(
            position=jnp.concatenate([state.position[None], ys]),
            log_density=jnp.concatenate([state.log_density[None], log_ps]),
            proposal_log_density=jnp.concatenate([state.proposal_log_density[None], log_qs]),
            score=None,
        )
        new = jax.tree.map(lambda a: a[idx], cands)
        n_bad = jnp.sum(~finite)
        info = Info(
            acceptance_rate=1.0 - probs[0],
            is_divergent=n_bad > 0,
            energy_error=safe_energy_error(log_w0 - jax.scipy.special.logsumexp(all_log_w)),
            num_grad_evals=jnp.asarray(0, jnp.int32),
            extras={"num_nonfinite": n_bad},
        )
        return new, info


class FlowLocalHybrid(AbstractSampler):
    """A global/local hybrid (Gabrié et al. 2022; Grenioux et al. 2023): each step is one
    independent-MH move with the flow proposal followed by `num_local_steps` steps of a local
    kernel (default use: `MALA`). Both moves leave the target invariant, so the chain is exact;
    the flow jumps between modes, the local kernel explores within them.

    `Info` reports the global move's acceptance; `extras["local_acceptance_rate"]` the mean
    acceptance of the local steps.
    """

    flow: Flow
    local: AbstractSampler
    num_local_steps: int = eqx.field(static=True)

    def __init__(self, flow: Flow, local: AbstractSampler, num_local_steps: int = 1):
        self.flow = _check_flow(flow)
        if not isinstance(local, AbstractSampler):
            raise TypeError(f"`local` must be an AbstractSampler, got {type(local).__name__}.")
        if isinstance(num_local_steps, bool) or not isinstance(num_local_steps, int):
            raise ValueError(f"`num_local_steps` must be an int >= 1, got {num_local_steps!r}.")
        self.local = local
        self.num_local_steps = check_int(num_local_steps, "num_local_steps", 1)

    def _local_needs_score(self, energy, x) -> bool | None:
        """`True`/`False` if the local kernel's state is an `MCMCState` with/without a score;
        `None` for other state types (then it is re-initialised after each global move)."""
        template = jax.eval_shape(lambda z: self.local.init(energy, z), x)
        if isinstance(template, MCMCState):
            return template.score is not None
        return None

    def init(self, energy: AbstractEnergy, x0: Array) -> FlowState:
        x0 = check_event(x0, energy.event_shape, "x0")
        with_score = bool(self._local_needs_score(energy, x0))
        return _init_flow_state(self.flow, energy, x0, with_score=with_score)

    def step(self, energy: AbstractEnergy, state: FlowState, *, key: Key):
        k_global, k_local = jax.random.split(key)
        needs = self._local_needs_score(energy, state.position)
        state, g_info = _imh_step(self.flow, energy, state, k_global, with_score=bool(needs))
        if needs is None:
            local_state = self.local.init(energy, state.position)
        else:
            local_state = MCMCState(
                position=state.position, log_density=state.log_density, score=state.score
            )

        def body(s, k):
            s, info = self.local.step(energy, s, key=k)
            return s, info

        local_state, infos = jax.lax.scan(
            body, local_state, jax.random.split(k_local, self.num_local_steps)
        )
        x = local_state.position
        new = FlowState(
            position=x,
            log_density=local_state.log_density,
            proposal_log_density=_flow_log_density(self.flow, x),
            score=local_state.score if needs else None,
        )
        info = Info(
            acceptance_rate=g_info.acceptance_rate,
            is_divergent=g_info.is_divergent | jnp.any(infos.is_divergent),
            energy_error=g_info.energy_error,
            num_grad_evals=(g_info.num_grad_evals + jnp.sum(infos.num_grad_evals)).astype(
                jnp.int32
            ),
            extras={"local_acceptance_rate": jnp.mean(infos.acceptance_rate)},
        )
        return new, info
