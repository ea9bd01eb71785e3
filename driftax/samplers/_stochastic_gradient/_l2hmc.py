"""The learned leapfrog of L2HMC (Levy, Hoffman & Sohl-Dickstein 2018; Foreman, Jin & Osborn
2021): generalized leapfrog layers whose momentum and position updates are scaled, translated
and transformed by small networks, with the Jacobian's log-determinant carried along, and a
Metropolis–Hastings step, so the kernel is exact for ANY parameters. The parameters are trained
by maximizing the expected squared jump distance on the shared training loop.

One layer, with `U = -log π`, `g = ∇U`, a binary mask `m` (`m̄ = 1 - m`) and networks giving
`(S, Q, T)` (`S`, `Q` through `tanh`):

    v₁ = v ⊙ e^{ε/2 S_v(x, g(x))} − ε/2 (g(x) ⊙ e^{ε Q_v(x, g(x))} + T_v(x, g(x)))
    x₁ = m̄⊙x  + m⊙[x  ⊙ e^{ε S_x(m̄⊙x, v₁)}  + ε (v₁ ⊙ e^{ε Q_x(m̄⊙x, v₁)}  + T_x(m̄⊙x, v₁))]
    x₂ = m⊙x₁ + m̄⊙[x₁ ⊙ e^{ε S_x(m⊙x₁, v₁)} + ε (v₁ ⊙ e^{ε Q_x(m⊙x₁, v₁)} + T_x(m⊙x₁, v₁))]
    v₂ = v₁ ⊙ e^{ε/2 S_v(x₂, g(x₂))} − ε/2 (g(x₂) ⊙ e^{ε Q_v(…)} + T_v(…))

Each sub-update changes one block given the others, so it inverts in closed form, and its
log-determinant is the sum of the exponents of its scale. With all networks at zero (their
initialization) a layer is one ordinary leapfrog step. A step draws `v ~ N(0, I)` and a direction
`d = ±1`, applies the layers forward (`d = +1`) or their inverse (`d = −1`), and accepts with
probability `min(1, π(x')N(v')/π(x)N(v) · |det J|)`: `(ξ, d) ↦ (F^d ξ, −d)` is an involution.
"""

from __future__ import annotations

from typing import ClassVar, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from ..._checks import check_count
from ..._custom_types import Array, Key
from ..._nn import MLP, hidden_widths
from ..._training import AbstractBatcher, TrainHistory, check_optimizer, train
from ...energies._base import AbstractEnergy
from .._base import (
    AbstractSampler,
    Info,
    MCMCState,
    check_hyper,
    init_position,
    safe_energy_error,
    value_and_score_at,
)
from .._mh import metropolis_hastings


def _sqt(net: MLP, a: Array, b: Array):
    out = net(jnp.concatenate([a, b])).astype(jnp.result_type(a))  # the state's dtype
    s, q, t = jnp.split(out, 3)
    return jnp.tanh(s), jnp.tanh(q), t


class LeapfrogLayer(eqx.Module):
    """One generalized leapfrog step: a momentum network `(x, ∇U(x)) ↦ (S_v, Q_v, T_v)`, a
    position network `(masked x, v) ↦ (S_x, Q_x, T_x)` and the binary `mask` of the first
    position update (a bool array, never trained)."""

    v_net: MLP
    x_net: MLP
    mask: Array

    def _v_update(self, eps, x, g, v, sign):
        s, q, t = _sqt(self.v_net, x, g)
        if sign > 0:
            out = v * jnp.exp(0.5 * eps * s) - 0.5 * eps * (g * jnp.exp(eps * q) + t)
        else:
            out = (v + 0.5 * eps * (g * jnp.exp(eps * q) + t)) * jnp.exp(-0.5 * eps * s)
        return out, 0.5 * eps * jnp.sum(s)

    def _x_update(self, eps, x, v, change, sign):
        keep = ~change
        s, q, t = _sqt(self.x_net, jnp.where(keep, x, 0.0), v)
        if sign > 0:
            moved = x * jnp.exp(eps * s) + eps * (v * jnp.exp(eps * q) + t)
        else:
            moved = (x - eps * (v * jnp.exp(eps * q) + t)) * jnp.exp(-eps * s)
        return jnp.where(change, moved, x), eps * jnp.sum(jnp.where(change, s, 0.0))

    def forward(self, energy, eps, x, v, logp, score):
        """One step forward (direction +1) with step size `eps` from `(x, v)` and the energy's
        `logp` / `score` at `x`: returns `(x', v', logp', score', log|det ∂(x', v')/∂(x, v)|)`."""
        v, ld1 = self._v_update(eps, x, -score, v, +1)
        x, ld2 = self._x_update(eps, x, v, self.mask, +1)
        x, ld3 = self._x_update(eps, x, v, ~self.mask, +1)
        logp, score = value_and_score_at(energy, x)
        v, ld4 = self._v_update(eps, x, -score, v, +1)
        return x, v, logp, score, ld1 + ld2 + ld3 + ld4

    def backward(self, energy, eps, x, v, logp, score):
        """The exact inverse of `forward` (same arguments and returns; the log-determinant is
        that of the inverse map)."""
        v, ld4 = self._v_update(eps, x, -score, v, -1)
        x, ld3 = self._x_update(eps, x, v, ~self.mask, -1)
        x, ld2 = self._x_update(eps, x, v, self.mask, -1)
        logp, score = value_and_score_at(energy, x)
        v, ld1 = self._v_update(eps, x, -score, v, -1)
        return x, v, logp, score, -(ld1 + ld2 + ld3 + ld4)


class LearnedLeapfrog(eqx.Module):
    """A stack of [`LeapfrogLayer`][driftax.samplers.LeapfrogLayer]s with a learned step size
    `ε = exp(log_step_size)`: an invertible map of `(x, v)` with a tractable log-determinant.
    The layers are stored stacked (every leaf has a leading `num_layers` axis) and applied in a
    `lax.scan`, so the compiled size does not grow with the depth. Build it with
    [`learned_leapfrog`][driftax.samplers.learned_leapfrog]."""

    layers: LeapfrogLayer
    log_step_size: Array

    @property
    def num_layers(self) -> int:
        """The number of leapfrog layers (gradient evaluations per map)."""
        return int(self.layers.mask.shape[0])

    @property
    def dim(self) -> int:
        """The dimension of `x`."""
        return int(self.layers.mask.shape[1])

    def _run(self, energy, x, v, sign):
        dtype = jnp.result_type(x)
        eps = jnp.exp(self.log_step_size).astype(dtype)
        logp, score = value_and_score_at(energy, x)
        return self._run_from(energy, eps, x, v, logp, score, sign)

    def _run_from(self, energy, eps, x, v, logp, score, sign):
        params, static = eqx.partition(self.layers, eqx.is_array)

        def body(carry, layer_params):
            x, v, logp, score, logdet = carry
            layer = eqx.combine(layer_params, static)
            move = layer.forward if sign > 0 else layer.backward
            x, v, logp, score, ld = move(energy, eps, x, v, logp, score)
            return (x, v, logp, score, logdet + ld), None

        init = (x, v, logp, score, jnp.zeros((), jnp.result_type(x)))
        out, _ = jax.lax.scan(body, init, params, reverse=sign < 0)
        return out

    def forward(self, energy: AbstractEnergy, x: Array, v: Array):
        """`(x', v', log|det ∂(x', v')/∂(x, v)|)` of the forward map at ONE point."""
        x, v, _, _, ld = self._run(energy, x, v, +1)
        return x, v, ld

    def backward(self, energy: AbstractEnergy, x: Array, v: Array):
        """The inverse map and its log-determinant."""
        x, v, _, _, ld = self._run(energy, x, v, -1)
        return x, v, ld


def learned_leapfrog(
    key: Key,
    dim: int,
    *,
    num_layers: int = 5,
    step_size: float = 0.1,
    hidden=(32, 32),
    init_scale: float = 0.0,
) -> LearnedLeapfrog:
    """A [`LearnedLeapfrog`][driftax.samplers.LearnedLeapfrog] on `R^dim` with `num_layers`
    layers (each its own two networks of widths `hidden`), starting step size `step_size`.
    With `init_scale=0` (default) the networks' last layers start at zero: the map is plain
    leapfrog (HMC with `num_layers` steps) until trained; `init_scale > 0` draws them at that
    scale instead (random, still exact under the MH step)."""
    dim = check_count(dim, "dim")
    num_layers = check_count(num_layers, "num_layers")
    check_hyper(step_size, "step_size")
    check_hyper(init_scale, "init_scale", strict=False)
    widths = hidden_widths(hidden)
    layers = []
    for i, k in enumerate(jax.random.split(key, num_layers)):
        kv, kx, kv2, kx2 = jax.random.split(k, 4)
        v_net = MLP(kv, 2 * dim, 3 * dim, widths, activation=jax.nn.tanh)
        x_net = MLP(kx, 2 * dim, 3 * dim, widths, activation=jax.nn.tanh)
        if init_scale > 0:
            for net_name, kk in (("v_net", kv2), ("x_net", kx2)):
                net = v_net if net_name == "v_net" else x_net
                w = init_scale * jax.random.normal(kk, net.weights[-1].shape)
                net = eqx.tree_at(lambda n: n.weights[-1], net, w.astype(net.weights[-1].dtype))
                if net_name == "v_net":
                    v_net = net
                else:
                    x_net = net
        mask = (jnp.arange(dim) + i) % 2 == 0
        layers.append(LeapfrogLayer(v_net=v_net, x_net=x_net, mask=mask))
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *layers)
    return LearnedLeapfrog(
        layers=stacked,
        log_step_size=jnp.log(jnp.asarray(step_size, jnp.result_type(float))),
    )


class L2HMC(AbstractSampler):
    """HMC with a learned leapfrog ([`LearnedLeapfrog`][driftax.samplers.LearnedLeapfrog]),
    Metropolis-adjusted with the map's log-determinant: exact for any parameters. Train it with
    [`fit_l2hmc`][driftax.samplers.fit_l2hmc]. One step evaluates `num_layers` gradients
    (`Info.num_grad_evals`); under `jax.vmap` both directions are computed and one kept.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    target = dx.energies.gaussian(jnp.zeros(2), jnp.array([[1.0, 0.9], [0.9, 1.0]]))
    sampler = dx.samplers.L2HMC(dx.samplers.learned_leapfrog(jax.random.key(0), 2))
    result = dx.sample(sampler, target, jnp.zeros(2), key=jax.random.key(1),
                       num_steps=200, num_warmup=0, check_health=False)
    ```
    """

    leapfrog: LearnedLeapfrog

    is_adjusted: ClassVar[bool] = True

    def __check_init__(self):
        if not isinstance(self.leapfrog, LearnedLeapfrog):
            raise TypeError(
                f"`leapfrog` must be a LearnedLeapfrog, got {type(self.leapfrog).__name__}."
            )

    def init(self, energy: AbstractEnergy, x0: Array) -> MCMCState:
        x0, logp, score = init_position(energy, x0)
        dim = self.leapfrog.dim
        if x0.ndim != 1 or x0.shape[0] != dim:
            raise ValueError(
                f"`x0` must be a vector of the leapfrog's dimension {dim}, got shape {x0.shape}."
            )
        return MCMCState(position=x0, log_density=logp, score=score)

    def propose(self, energy: AbstractEnergy, state: MCMCState, *, key: Key):
        """`(proposal, log MH ratio, momentum)`: the differentiable part of a step (used by
        the training loss)."""
        x = state.position
        dtype = jnp.result_type(x)
        kv, kd = jax.random.split(key)
        v = jax.random.normal(kv, x.shape, dtype)
        forward = jax.random.bernoulli(kd)
        lf = self.leapfrog
        eps = jnp.exp(lf.log_step_size).astype(dtype)
        args = (energy, eps, x, v, state.log_density, state.score)
        fx, fv, flp, fs, fld = lf._run_from(*args, +1)
        bx, bv, blp, bs, bld = lf._run_from(*args, -1)
        pick = lambda a, b: jnp.where(forward, a, b)  # noqa: E731
        x1, v1, lp1, s1, ld = (
            pick(fx, bx),
            pick(fv, bv),
            pick(flp, blp),
            pick(fs, bs),
            pick(fld, bld),
        )
        log_ratio = lp1 - 0.5 * jnp.sum(v1**2) - state.log_density + 0.5 * jnp.sum(v**2) + ld
        return MCMCState(position=x1, log_density=lp1, score=s1), log_ratio

    def step(self, energy: AbstractEnergy, state: MCMCState, *, key: Key):
        k_prop, k_acc = jax.random.split(key)
        proposal, log_ratio = self.propose(energy, state, key=k_prop)
        valid = jnp.all(jnp.isfinite(proposal.position)) & jnp.all(
            jnp.isfinite(cast(Array, proposal.score))
        )
        new, acc, _, divergent = metropolis_hastings(
            log_ratio, proposal, state, key=k_acc, valid=valid
        )
        info = Info(
            acceptance_rate=acc.astype(jnp.result_type(state.position)),
            is_divergent=divergent,
            energy_error=safe_energy_error(-log_ratio),
            num_grad_evals=jnp.asarray(self.leapfrog.num_layers, jnp.int32),
        )
        return new, info


class _ChainBatcher(AbstractBatcher):
    """Persistent chains: the batch is the chains' current points; after each step the loss's
    aux (the chains' next points, stop-gradient) becomes the state."""

    x0: Array

    def init(self, key):
        return self.x0

    def next(self, state, model, key, step):
        return state, state

    def update(self, state, model, aux, key):
        return aux


class _ESJDLoss(eqx.Module):
    """The L2HMC loss on a batch of chain points: `mean(λ²/(A δ)) − mean(A δ)/λ²` with `δ`
    the squared jump of the proposal and `A` its acceptance probability; aux: the chains'
    next points (after the MH step, no gradient)."""

    energy: AbstractEnergy
    scale: float = eqx.field(static=True)

    def __call__(self, sampler: L2HMC, xs, *, key):
        keys = jax.random.split(key, xs.shape[0])

        def one(x, k):
            k_prop, k_acc = jax.random.split(k)
            logp, score = value_and_score_at(self.energy, x)
            state = MCMCState(position=x, log_density=logp, score=score)
            proposal, log_ratio = sampler.propose(self.energy, state, key=k_prop)
            acc = jnp.exp(jnp.minimum(jnp.where(jnp.isfinite(log_ratio), log_ratio, -jnp.inf), 0.0))
            jump = jnp.sum((proposal.position - x) ** 2)
            u = jax.random.uniform(k_acc, (), acc.dtype)
            nxt = jnp.where(u < acc, proposal.position, x)
            return acc * jump, acc, jax.lax.stop_gradient(nxt)

        aj, acc, nxt = jax.vmap(one)(xs, keys)
        lam2 = self.scale**2
        value = jnp.mean(lam2 / (aj + 1e-6)) - jnp.mean(aj) / lam2
        return value, nxt


def fit_l2hmc(
    sampler: L2HMC,
    energy: AbstractEnergy,
    x0: Array,
    *,
    key: Key,
    optimizer=None,
    num_steps: int = 1000,
    scale: float = 1.0,
    progress: bool = False,
) -> tuple[L2HMC, TrainHistory]:
    """Train the learned leapfrog of `sampler` on `energy` by the L2HMC loss (expected squared
    jump distance with a penalty on small jumps, `scale` = `λ`, the length scale of the
    target) over persistent chains started at `x0` (shape `(batch_size, dim)`: the number of
    chains is the batch), on the shared training loop (`driftax._training.train`).

    **Returns:** `(trained L2HMC, TrainHistory)`: the loss per step in `losses`, the chains'
    points after every step in `aux`.
    """
    if not isinstance(sampler, L2HMC):
        raise TypeError(f"`sampler` must be an L2HMC, got {type(sampler).__name__}.")
    x0 = jnp.asarray(x0, energy.dtype)
    dim = sampler.leapfrog.dim
    if x0.ndim != 2 or x0.shape[1] != dim:
        raise ValueError(f"`x0` must have shape (batch_size, {dim}), got {x0.shape}.")
    check_hyper(scale, "scale")
    optimizer = optax.adam(1e-3) if optimizer is None else optimizer
    check_optimizer(optimizer)
    num_steps = check_count(num_steps, "num_steps")
    trained, history = train(
        sampler,
        _ESJDLoss(energy=energy, scale=float(scale)),
        _ChainBatcher(x0=x0),
        key=key,
        optimizer=optimizer,
        num_steps=num_steps,
        progress=progress,
        desc="L2HMC",
        warn_name="fit_l2hmc",
    )
    return trained, history
