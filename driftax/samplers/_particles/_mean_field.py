"""Mean-field underdamped Langevin dynamics for a functional F(μ) of the particles' empirical
measure (Fu & Wilson 2024): the MMD to target samples (Riesz kernel, sliced gradient) or the
kernel Stein discrepancy to a target density."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ..._checks import check_choice, check_hyper, check_int
from ..._custom_types import Array, Key
from ...energies._base import AbstractEnergy
from ...energies._metrics import as_pair, as_samples
from ._mmd_flow import _sliced
from ._thinning import stein_kernel


def ksd_squared(energy: AbstractEnergy, x: Array, h) -> Array:
    """The V-statistic `KSD²(μ_N) = 1/N² Σ_ij k_p(x_i, x_j)` of the flat particles `x` `(N, D)`
    with the IMQ Langevin Stein kernel of bandwidth `h`."""
    s = jax.vmap(lambda p: energy.score(p.reshape(energy.event_shape)).reshape(-1))(x)
    s = s.astype(x.dtype)
    rows = jax.vmap(lambda a, sa: jax.vmap(lambda b, sb: stein_kernel(a, b, sa, sb, h))(x, s))
    return jnp.mean(rows(x, s))


@eqx.filter_jit
def _run(x0, key, energy, y, step_size, friction, temperature, h, num_steps, functional, proj):
    n = x0.shape[0]

    def force(x, k):
        if functional == "mmd":
            return -n * _sliced(x, y, k, proj)
        return -n * jax.grad(lambda z: ksd_squared(energy, z, h))(x)

    decay = jnp.exp(-friction * step_size)
    kick = -jnp.expm1(-friction * step_size) / friction
    noise = jnp.sqrt(temperature * -jnp.expm1(-2.0 * friction * step_size))

    def step(carry, k):
        x, v = carry
        k_f, k_n = jax.random.split(k)
        v = decay * v + kick * force(x, k_f) + noise * jax.random.normal(k_n, v.shape, v.dtype)
        return (x + step_size * v, v), None

    keys = jax.random.split(key, num_steps)
    (x, _), _ = jax.lax.scan(step, (x0, jnp.zeros_like(x0)), keys)
    return x


def mean_field_langevin(
    x0,
    *,
    key: Key,
    num_steps: int,
    step_size: float,
    functional: str = "mmd",
    target_samples=None,
    energy: AbstractEnergy | None = None,
    friction: float = 1.0,
    temperature: float = 0.0,
    bandwidth: float = 1.0,
    num_projections: int = 64,
) -> Array:
    r"""Mean-field underdamped Langevin dynamics (Fu & Wilson 2024) minimizing a functional
    `F(μ)` of the particles' empirical measure `μ = 1/N Σ δ_{x_i}` (plus `temperature ×`
    entropy): every particle feels the force `-∇ δF/δμ (x_i) = -N ∇_{x_i} F(μ)`, with friction
    `γ` and an exact Ornstein–Uhlenbeck velocity update over each step `h` (force frozen):

    `v ← e^{-γh} v + (1 - e^{-γh})/γ · force + √(temperature (1 - e^{-2γh})) ξ`,
    `x ← x + h v`.

    - `functional="mmd"`: `F = MMD²(μ, ν)` with the Riesz kernel against `target_samples`
      (`ν`), its gradient by slicing and sorting ([`sliced_mmd_gradient`][]);
    - `functional="ksd"`: `F = KSD²(μ)`, the kernel Stein discrepancy (IMQ kernel of
      `bandwidth`) to the density of `energy`: it needs only the score, not samples; each
      step costs O(N²) kernel evaluations and second derivatives of `log π`.

    With `temperature = 0` the dynamics are a damped (heavy-ball) descent of `F`; a positive
    temperature samples the entropy-regularized minimizer `∝ exp(-δF/δμ / temperature)`
    (not the target itself).

    **Arguments:**

    - `x0`: initial particles `(N, d)`.
    - `key`: a JAX PRNG key.
    - `num_steps`, `step_size`: the number and size of steps.
    - `functional`: `"mmd"` or `"ksd"`.
    - `target_samples`: `(M, d)` for `"mmd"`; `energy`: the target for `"ksd"`.
    - `friction`: `γ > 0`; `temperature`: `≥ 0`.
    - `bandwidth`: the IMQ bandwidth of `"ksd"`; `num_projections`: slices for `"mmd"`.

    **Returns:** the final particles `(N, d)`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    target = dx.energies.gaussian(jnp.zeros(2))
    x0 = jax.random.normal(jax.random.key(0), (100, 2)) * 0.5 + 2.0
    x = dx.samplers.mean_field_langevin(x0, key=jax.random.key(1), num_steps=300,
                                        step_size=0.1, functional="ksd", energy=target)
    x.mean(axis=0)  # near [0, 0]
    ```
    """
    functional = check_choice(functional, "functional", ("mmd", "ksd"))
    num_steps = check_int(num_steps, "num_steps", 1)
    num_projections = check_int(num_projections, "num_projections", 1)
    check_hyper(step_size, "step_size")
    check_hyper(friction, "friction")
    check_hyper(temperature, "temperature", strict=False)
    check_hyper(bandwidth, "bandwidth")
    if functional == "mmd":
        if target_samples is None or energy is not None:
            raise ValueError("functional='mmd' needs `target_samples` (and no `energy`).")
        x0, y = as_pair(x0, target_samples, min_n=2)
        energy_arg = None
    else:
        if energy is None or target_samples is not None:
            raise ValueError("functional='ksd' needs `energy` (and no `target_samples`).")
        if not isinstance(energy, AbstractEnergy):
            raise TypeError(
                f"`energy` must be a driftax AbstractEnergy, got {type(energy).__name__}."
            )
        x0 = as_samples(x0, "x0")
        if x0.shape[1] != energy.dim:
            raise ValueError(f"`x0` must have shape (N, {energy.dim}), got {tuple(x0.shape)}.")
        y, energy_arg = None, energy
    dt = x0.dtype
    return _run(
        x0, key, energy_arg, y, jnp.asarray(step_size, dt), jnp.asarray(friction, dt),
        jnp.asarray(temperature, dt), jnp.asarray(bandwidth, dt), num_steps, functional,
        num_projections,
    )  # fmt: skip
