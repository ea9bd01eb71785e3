"""Stochastic normalizing flows (Wu, Köhler & Noé, 2020).

Deterministic bijections interleaved with MCMC blocks that target intermediate energies
`log π_β = (1 - β) log p_base + β log p̃`. A forward pass from `z ~ base` returns a sample and a
path log-weight

    log w = log p̃(x_K) - log q_0(z) + Σ log|det ∂T_k| + Σ_blocks [log π_β(x_in) - log π_β(x_out)],

where each block's term is `log B(x_in | x_out) - log F(x_out | x_in)` for a Metropolis-adjusted
(π_β-reversible) kernel. `E[exp(log w)] = Z` exactly, whatever the layers, so the weights give
unbiased normalising constants and exact reweighting; training minimises `E[-log w]` (the KL
between forward and backward path measures) end to end.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Key, Shape
from .._training import check_count, train_subset
from ..energies._base import (
    AbstractEnergy,
    check_sample_shape,
)
from ..energies._compose import GeometricPath
from ..samplers._base import AbstractSampler
from ._bijection import AbstractBijection
from ._distribution import base_log_density, check_base


class MCMCBlock(eqx.Module):
    """`num_steps` steps of a Metropolis-adjusted `sampler` (e.g. `MALA`, `RandomWalk`, `HMC`)
    targeting `(1 - beta) log p_base + beta log p̃`, as a layer of a [`StochasticFlow`][]."""

    sampler: AbstractSampler
    beta: float = eqx.field(static=True)
    num_steps: int = eqx.field(static=True)

    def __init__(self, sampler: AbstractSampler, beta: float = 1.0, num_steps: int = 1):
        if not isinstance(sampler, AbstractSampler):
            raise TypeError(f"`sampler` must be an AbstractSampler, got {type(sampler).__name__}.")
        if not sampler.is_adjusted:
            raise ValueError(
                "an MCMCBlock needs a Metropolis-adjusted (reversible) sampler: the path weight "
                f"of {type(sampler).__name__} is not an energy difference."
            )
        if not 0.0 <= float(beta) <= 1.0:
            raise ValueError(f"`beta` must lie in [0, 1], got {beta!r}.")
        self.sampler = sampler
        self.beta = float(beta)
        self.num_steps = check_count(num_steps, "num_steps")

    def run(self, base: AbstractEnergy, energy: AbstractEnergy, x: Array, key: Key):
        """`(x_out, log B/F, acceptance)` for one point."""
        target = GeometricPath(base, energy, self.beta)
        state = self.sampler.init(target, x)
        log_in = state.log_density

        def body(s, k):
            s, info = self.sampler.step(target, s, key=k)
            return s, info.acceptance_rate

        state, acc = jax.lax.scan(body, state, jax.random.split(key, self.num_steps))
        return state.position, log_in - state.log_density, jnp.mean(acc)


class StochasticFlow(eqx.Module):
    """A stochastic normalizing flow: a base distribution and a sequence of layers, each a
    bijection or an [`MCMCBlock`][]. Not an energy (its density is intractable); it produces
    samples with exact importance log-weights against any target energy.

    **Arguments:**

    - `base`: a sampleable energy with a known normalizer (e.g. [`StandardNormal`][]).
    - `layers`: bijections and MCMC blocks, applied in order.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx
    fl = dx.flows

    target = dx.energies.double_well_2d()
    snf = fl.StochasticFlow(fl.StandardNormal(2), [
        fl.Coupling(jax.random.key(0), 2, hidden=16),
        fl.MCMCBlock(dx.samplers.MALA(step_size=0.05), beta=0.5, num_steps=2),
        fl.Coupling(jax.random.key(1), 2, mask=jnp.array([False, True]), hidden=16),
        fl.MCMCBlock(dx.samplers.MALA(step_size=0.05), beta=1.0, num_steps=2),
    ])
    x, log_w = snf.sample_and_log_weight(target, key=jax.random.key(2), shape=(100,))
    ```
    """

    base: AbstractEnergy
    layers: tuple

    def __init__(self, base: AbstractEnergy, layers):
        check_base(base)
        layers = tuple(layers)
        if not layers:
            raise ValueError("`layers` must contain at least one layer.")
        for i, layer in enumerate(layers):
            if isinstance(layer, AbstractBijection):
                if tuple(layer.event_shape) != tuple(base.event_shape):
                    raise ValueError(
                        f"`layers[{i}]` has shape {layer.event_shape}, expected {tuple(base.event_shape)}."
                    )
                if layer.cond_shape is not None:
                    raise ValueError(f"`layers[{i}]` is conditional; a StochasticFlow needs none.")
            elif not isinstance(layer, MCMCBlock):
                raise TypeError(
                    f"`layers[{i}]` must be an AbstractBijection or an MCMCBlock, got {type(layer).__name__}."
                )
        self.base = base
        self.layers = layers

    @property
    def event_shape(self) -> Shape:
        return tuple(self.base.event_shape)

    def _one(self, energy: AbstractEnergy, key: Key):
        k_base, k_blocks = jax.random.split(key)
        z = self.base.sample(k_base)  # type: ignore[attr-defined]
        log_w = -base_log_density(self.base, z)
        x = z
        accs = []
        for i, layer in enumerate(self.layers):
            if isinstance(layer, MCMCBlock):
                x, dlw, acc = layer.run(self.base, energy, x, jax.random.fold_in(k_blocks, i))
                log_w = log_w + dlw
                accs.append(acc)
            else:
                x, log_det = layer.transform_and_log_det(x)
                log_w = log_w + log_det
        log_w = log_w + energy.log_density(x)
        acc = jnp.stack(accs) if accs else jnp.zeros((0,), log_w.dtype)
        return x, log_w, acc

    def sample_and_log_weight(
        self, energy: AbstractEnergy, *, key: Key, shape: Shape | int = ()
    ) -> tuple[Array, Array]:
        """Samples `(*shape, *event_shape)` and their path log-weights `(*shape)` against the
        unnormalised `energy`: `logmeanexp(log_w)` estimates `log Z` without bias in `Z`."""
        x, log_w, _ = self.sample_with_info(energy, key=key, shape=shape)
        return x, log_w

    def sample_with_info(self, energy: AbstractEnergy, *, key: Key, shape: Shape | int = ()):
        """As [`StochasticFlow.sample_and_log_weight`][], plus the mean acceptance rate of each
        MCMC block, shape `(*shape, num_blocks)`."""
        if tuple(energy.event_shape) != self.event_shape:
            raise ValueError(
                f"`energy` event shape {tuple(energy.event_shape)} must equal {self.event_shape}."
            )
        shape = check_sample_shape(shape)
        n = int(np.prod(shape)) if shape else 1
        keys = jax.random.split(key, n)
        x, log_w, acc = jax.vmap(lambda k: self._one(energy, k))(keys)
        return (
            x.reshape(*shape, *self.event_shape),
            log_w.reshape(shape),
            acc.reshape(*shape, acc.shape[-1]),
        )


def _snf_spec(snf: StochasticFlow):
    """What trains: the bijections' float arrays (the MCMC blocks stay fixed)."""
    spec = jax.tree.map(lambda _: False, snf)
    layers = tuple(
        jax.tree.map(eqx.is_inexact_array, layer)
        if isinstance(layer, AbstractBijection)
        else jax.tree.map(lambda _: False, layer)
        for layer in snf.layers
    )
    return eqx.tree_at(lambda s: s.layers, spec, replace=layers)


class _PathKL(eqx.Module):
    """`E[-log w]` over `batch_size` forward paths (key-only)."""

    energy: AbstractEnergy
    batch_size: int = eqx.field(static=True)

    def __call__(self, snf, batch, *, key):
        _, log_w = snf.sample_and_log_weight(self.energy, key=key, shape=(self.batch_size,))
        return -jnp.mean(log_w), None


def fit_stochastic_flow(
    snf: StochasticFlow,
    energy: AbstractEnergy,
    *,
    key: Key,
    optimizer,
    num_steps: int,
    batch_size: int,
    progress: bool = False,
) -> tuple[StochasticFlow, dict[str, Array]]:
    """Train the bijections of a [`StochasticFlow`][] end to end by minimising `E[-log w]`
    (the path-space KL, reparameterised through the MCMC blocks' accepted moves; the MCMC
    hyperparameters are kept fixed).

    `key`, `optimizer`, `num_steps`, `batch_size` (paths per step) and `progress` as for
    [`fit_reverse_kl`][]; the shared training loop skips and reports non-finite steps.

    **Returns:** `(trained_snf, losses)` with `losses["train"]` the per-step `-mean(log w)`
    (an upper bound on `-log Z`).
    """
    if not isinstance(snf, StochasticFlow):
        raise TypeError(f"`snf` must be a StochasticFlow, got {type(snf).__name__}.")
    batch_size = check_count(batch_size, "batch_size")
    if tuple(energy.event_shape) != snf.event_shape:
        raise ValueError(f"`energy` event shape must equal {snf.event_shape}.")
    loss, spec = _PathKL(energy, batch_size), _snf_spec(snf)
    trained, history = train_subset(
        snf, loss, None, spec, key, optimizer, num_steps, progress, "fit_stochastic_flow"
    )
    return trained, {"train": history.losses}
