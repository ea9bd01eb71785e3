"""The training objectives of the learned samplers, as loss modules for the shared loop
(`driftax/_training.py`), with the batchers that feed them (a replay buffer refined by local
search; the Adjoint Sampling buffer of terminal states and lean adjoints)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ..._custom_types import Array
from ..._training import AbstractBatcher
from ...energies._base import AbstractEnergy
from ._buffer import LocalSearch, _local_search
from ._core import _clip, _score_fn, forward_path, path_steps
from ._gflownet import subtrajectory_balance, trajectory_balance

LOSSES: tuple[str, ...] = (
    "kl",
    "log_variance",
    "vargrad",
    "trajectory_balance",
    "subtrajectory_balance",
    "adjoint",
)
# the losses valid on off-policy paths (exploration, replay buffer)
OFF_POLICY: tuple[str, ...] = ("log_variance", "trajectory_balance", "subtrajectory_balance")
# the losses with a learned log Z
BALANCE: tuple[str, ...] = ("trajectory_balance", "subtrajectory_balance")


class PathLoss(eqx.Module):
    """The path losses, one implementation each, for every sampler:

    - `"kl"`: `-mean log w` over reparameterized forward paths;
    - `"log_variance"` (VarGrad): `Var[log w]` over detached paths;
    - `"trajectory_balance"`: `mean (log Z - log w)²` with the learned `log Z`;
    - `"subtrajectory_balance"`: the λ-weighted balance of every sub-path with the learned
      `log Z` and log-flow (`_gflownet.subtrajectory_balance`); with `forward_looking`, the
      log-flow is the network plus the FL interpolation `(k/K) log p̃ + (1 - k/K) log r_k`
      (`K - 1` more energy evaluations per path).

    The off-policy losses take detached forward paths drawn from the behaviour kernels widened
    by `σ_e = exploration · max(0, 1 - step / anneal_steps)` (scored by the model's own
    kernels) and, with a replay buffer, backward paths from buffer samples. The model is the
    sampler, or the `_Balanced` wrapper for the balance losses. Batch: the step index, or
    `((data, count, acceptance), step)` with a buffer. Aux: `(x_K, elbo, log Z, acceptance,
    learned log Z)` of the on-policy paths (the acceptance of the local search that fed this
    step's buffer; the learned log Z is NaN without one)."""

    energy: AbstractEnergy
    loss: str = eqx.field(static=True)
    batch_size: int = eqx.field(static=True)
    search: LocalSearch | None
    exploration: Array | None = None
    anneal_steps: int = eqx.field(static=True, default=1)
    subtrajectory_lambda: float = eqx.field(static=True, default=0.9)
    forward_looking: bool = eqx.field(static=True, default=False)

    def _forward_looking(self, sampler):
        """FL-SubTB's known part of the log-flow at step `k`: `(k/K) log p̃(x) + (1 - k/K)
        log r_k(x)` with `r_k` the reference process's density (Zhang et al. 2023)."""
        if not self.forward_looking:
            return None
        num_steps = sampler.num_steps

        def fl(k, x):
            frac = (k / num_steps).astype(x.dtype)
            log_ref = sampler.reference_log_density(k, x)
            return frac * self.energy.log_density(x) + (1 - frac) * log_ref

        return fl

    def __call__(self, model, batch, *, key):
        energy, search, n = self.energy, self.search, self.batch_size
        balance = self.loss in BALANCE
        sampler = model.sampler if balance else model
        if search is None:
            buffer, step = None, batch
        else:
            buffer, step = batch
        explore = None
        if self.exploration is not None:
            frac = jnp.maximum(0.0, 1.0 - step / self.anneal_steps)
            explore = self.exploration * frac.astype(self.exploration.dtype)
        k_on, k_off = jax.random.split(key)
        n_on = n if search is None else n - int(round(n * search.fraction))
        detach = self.loss != "kl"
        on_keys = jax.random.split(k_on, n_on)
        paths = jax.vmap(lambda k: path_steps(sampler, energy, k, detach=detach, explore=explore))(
            on_keys
        )
        x, log_w = paths.states[:, -1], jax.vmap(lambda p: p.log_weight)(paths)
        all_paths, all_w = paths, log_w
        acc = jnp.zeros((), x.dtype)
        if buffer is not None:
            assert search is not None
            data, count, acc = buffer
            k_idx, k_path = jax.random.split(k_off)
            n_off = n - n_on
            idx = jax.random.randint(k_idx, (n_off,), 0, jnp.maximum(count, 1))
            fallback = jax.lax.stop_gradient(x[jnp.arange(n_off) % n_on])
            starts = jnp.where(count > 0, data[idx], fallback)
            off = jax.vmap(lambda y, k: path_steps(sampler, energy, k, x_final=y))(
                starts, jax.random.split(k_path, n_off)
            )
            all_paths = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), paths, off)
            all_w = jnp.concatenate([log_w, jax.vmap(lambda p: p.log_weight)(off)])
        learned = jnp.full((), jnp.nan, x.dtype)
        if self.loss == "kl":
            value = -jnp.mean(all_w)
        elif self.loss == "log_variance":
            value = jnp.var(all_w)
        elif self.loss == "trajectory_balance":
            value = trajectory_balance(model.log_z, all_w)
        else:
            value = subtrajectory_balance(
                model.log_z,
                model.log_flow,
                all_paths,
                sampler.num_steps,
                self.subtrajectory_lambda,
                self._forward_looking(sampler),
            )
        if balance:
            learned = jax.lax.stop_gradient(model.log_z).astype(x.dtype)
        log_w = jax.lax.stop_gradient(log_w)
        aux = (
            jax.lax.stop_gradient(x),
            jnp.mean(log_w),
            jax.nn.logsumexp(log_w) - jnp.log(n_on),
            acc,
            learned,
        )
        return value, aux


class ReplayBuffer(AbstractBatcher):
    """A FIFO buffer of terminal samples refined by MCMC local search: after a step the
    on-policy samples wait in the state; before the next step they take the local-search
    moves and enter the buffer, which (with the step index, for the exploration schedule) is
    that step's batch."""

    energy: AbstractEnergy
    search: LocalSearch
    dim: int = eqx.field(static=True)
    batch_size: int = eqx.field(static=True)

    def init(self, key):
        dtype = jnp.result_type(float)
        data = jnp.zeros((self.search.buffer_size, self.dim), dtype)
        n_on = self.batch_size - int(round(self.batch_size * self.search.fraction))
        pending = jnp.zeros((n_on, self.dim), dtype)
        return data, jnp.array(0), pending, jnp.array(False), jnp.zeros((), dtype)

    def next(self, state, model, key, step):
        data, count, pending, has_pending, _ = state
        fresh, acc_each = _local_search(
            self.search.kernel, self.energy, pending, key, self.search.num_steps
        )
        good = jnp.all(jnp.isfinite(fresh), axis=-1)
        fresh = jnp.where(good[:, None], fresh, pending)
        size = data.shape[0]
        pos = (count + jnp.arange(fresh.shape[0])) % size
        pushed = data.at[pos].set(fresh)
        data = jnp.where(has_pending, pushed, data)
        count = jnp.where(has_pending, jnp.minimum(count + fresh.shape[0], size), count)
        acc = jnp.where(has_pending, jnp.mean(acc_each), 0.0).astype(data.dtype)
        return ((data, count, acc), step), (data, count, pending, has_pending, acc)

    def update(self, state, model, aux, key):
        data, count, _, _, acc = state
        return data, count, aux[0], jnp.array(True), acc


class AdjointLoss(eqx.Module):
    """Reciprocal adjoint matching (Adjoint Sampling): `|f(t, X_t)/σ² + a|²` at Brownian-bridge
    points `X_t` between 0 and buffer samples `x` with lean adjoints `a = ∇g(x)`,
    `g = log N(·; 0, σ²T) - log p̃`. Batch: the [`AdjointBuffer`][] state."""

    energy: AbstractEnergy
    batch_size: int = eqx.field(static=True)

    def __call__(self, sampler, batch, *, key):
        data, targets, count, lower, log_z, acc = batch
        n = self.batch_size
        ts = sampler.times().astype(data.dtype)
        horizon, sigma = sampler.horizon, sampler.sigma
        score = _score_fn(sampler, self.energy)
        ki, kt, kn = jax.random.split(key, 3)
        idx = jax.random.randint(ki, (n,), 0, jnp.maximum(count, 1))
        x1, a1 = data[idx], targets[idx]
        t = ts[jax.random.randint(kt, (n,), 0, sampler.num_steps)]
        noise = jax.vmap(sampler.project)(jax.random.normal(kn, x1.shape, x1.dtype))
        std = sigma * jnp.sqrt(t * (horizon - t) / horizon)
        xt = (t / horizon)[:, None] * x1 + std[:, None] * noise
        f = jax.vmap(sampler.drift)(t, xt, jax.vmap(score)(xt))
        value = jnp.mean(jnp.sum((f / sigma**2 + a1) ** 2, axis=-1))
        return value, (None, lower, log_z, acc, jnp.full((), jnp.nan, lower.dtype))


class AdjointBuffer(AbstractBatcher):
    """Every `num_updates` steps: simulate `batch_size` paths of the current sampler (no
    gradients), optionally move the terminal states by local search, and push them with their
    lean adjoints into a FIFO buffer of `size`."""

    energy: AbstractEnergy
    search: LocalSearch | None
    dim: int = eqx.field(static=True)
    batch_size: int = eqx.field(static=True)
    size: int = eqx.field(static=True)
    num_updates: int = eqx.field(static=True)

    def init(self, key):
        dtype = jnp.result_type(float)
        empty = jnp.zeros((self.size, self.dim), dtype)
        zero = jnp.zeros((), dtype)
        return empty, empty, jnp.array(0), zero, zero, zero

    def _refresh(self, state, sampler, key):
        data, targets, count, _, _, _ = state
        energy, n = self.energy, self.batch_size
        k_sim, k_ls = jax.random.split(key)
        x, log_w = jax.vmap(lambda k: forward_path(sampler, energy, k, detach=True))(
            jax.random.split(k_sim, n)
        )
        x, log_w = jax.lax.stop_gradient((x, log_w))
        acc = jnp.zeros((), x.dtype)
        if self.search is not None:
            moved, acc_each = _local_search(
                self.search.kernel, energy, x, k_ls, self.search.num_steps
            )
            moved = jax.vmap(sampler.project)(moved)
            x = jnp.where(jnp.all(jnp.isfinite(moved), -1)[:, None], moved, x)
            acc = jnp.mean(acc_each)
        nu = sampler.sigma**2 * sampler.horizon

        def adjoint(y):
            return -sampler.project(_clip(energy.score(y), sampler.clip) + y / nu)

        a = jax.vmap(adjoint)(x)
        good = jnp.all(jnp.isfinite(x), -1) & jnp.all(jnp.isfinite(a), -1)
        pos = (count + jnp.arange(n)) % self.size
        data = data.at[pos].set(jnp.where(good[:, None], x, data[pos]))
        targets = targets.at[pos].set(jnp.where(good[:, None], a, targets[pos]))
        count = jnp.minimum(count + n, self.size)
        lower = jnp.mean(log_w)
        log_z = jax.nn.logsumexp(log_w) - jnp.log(n)
        return data, targets, count, lower, log_z, acc

    def next(self, state, model, key, step):
        state = jax.lax.cond(
            step % self.num_updates == 0,
            lambda: self._refresh(state, model, key),
            lambda: state,
        )
        return state, state
