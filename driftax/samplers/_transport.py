"""The transport hook of `SMC`: a map fitted to the particles at every annealing stage."""

from __future__ import annotations

import abc

import equinox as eqx

from .._custom_types import Array, Key, Scalar


class AbstractTransport(eqx.Module):
    """A map `T` fitted at every stage of [`SMC`][] that carries the particles of `π_β` toward
    `π_β'` before the reweighting (annealed flow transport, Arbel, Matthews & Doucet 2021).

    With a transport the incremental log-weight of a particle `x` is
    `log π_β'(T(x)) + log|det ∇T(x)| - log π_β(x)`; without one (`T` = identity) it reduces to
    geometric annealing's `(β' - β)(log p(x) - log p_ref(x))`. `driftax.flows.FlowTransport` is
    the implementation with a normalizing flow trained at every stage. With a transport, `SMC`
    runs a second population of training particles (same size, same annealing, resampling
    and moves) on which alone the maps are fitted, as in Arbel et al.: the estimating
    particles then see maps independent of themselves and `Ẑ` stays unbiased (at twice the
    cost per stage).
    """

    @abc.abstractmethod
    def fit_and_transport(
        self,
        key: Key,
        x_train: Array,
        log_weights: Array,
        log_density_next,
        x: Array,
        stage: Scalar,
    ) -> tuple[Array, Array, Scalar]:
        """Fit the stage's map to weighted training particles and apply it to `x`.

        **Arguments:**

        - `key`: a PRNG key for the fit.
        - `x_train`: the training particles, shape `(m, *event_shape)`, distributed as `π_β`
          after weighting. `SMC` runs them as a separate population, independent of the
          particles it estimates with (fitting a map to the particles it then moves would bias
          `log Ẑ` upward).
        - `log_weights`: their normalized log-weights, shape `(m,)`.
        - `log_density_next`: `log π_β'` of ONE unbatched point (unnormalized).
        - `x`: the particles to move, shape `(k, *event_shape)`.
        - `stage`: the stage index (an integer scalar).

        **Returns:** `(T(x), log_det, loss)`: the moved particles, the per-particle
        `log|det ∇T(x)|` (shape `(k,)`), and the final value of the fit's loss (a scalar).
        """

    def num_grad_evals(self, num_train_particles: int) -> int:
        """Target gradient evaluations of one stage's fit with `num_train_particles` training
        particles (counted in the result's `num_grad_evals`); 0 unless a subclass says otherwise."""
        del num_train_particles
        return 0
