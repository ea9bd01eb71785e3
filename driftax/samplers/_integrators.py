"""One splitting core for Hamiltonian and underdamped Langevin dynamics.

The dynamics `dx = M⁻¹p dt`, `dp = ∇log π(x) dt - γ p dt + √(2γ) M^{1/2} dW` is split into

- **B** (kick): `p ← p + h ∇log π(x)`;
- **A** (drift): `x ← x + h M⁻¹ p`;
- **O** (Ornstein–Uhlenbeck, exact): `p ← e^{-γh} p + √(1 - e^{-2γh}) M^{1/2} ξ`;
- **U** (the exact flow of A and O together, with the correlated Gaussian increments of
  `(x, p)`), used by UBU and the kinetic randomized midpoint method;
- **I** (isokinetic velocity update): the exact flow of the energy-sampling (ESH / isokinetic)
  dynamics' momentum equation, which keeps `|p|_{M⁻¹}` fixed and turns the momentum towards the
  score; used in place of B by the microcanonical samplers (MCLMC, MAMS).

An integrator is a static sequence of these steps with coefficients (fractions of the step
size). The core evaluates a gradient only when a kick needs the score at a position that moved
(and once at the end, so the state always carries the score of its position); the number of
gradients per step is therefore a static property of the scheme. Every sampler that moves
with Hamiltonian or Langevin dynamics (HMC, NUTS, MALA, ULA, ChEES-HMC, underdamped Langevin,
randomized midpoint, MCLMC, MAMS) goes through the functions in this file. The velocity refresh
of the microcanonical samplers (`partial_refresh`, `unit_momentum`) lives here too.
"""

from __future__ import annotations

import math
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp

from .._custom_types import Array, Key, Scalar
from ..energies._base import AbstractEnergy
from ._base import KineticState, value_and_score_at
from ._metrics import AbstractMetric
from ._random import draws

# ---------------------------------------------------------------------------------------------
# The elementary steps
# ---------------------------------------------------------------------------------------------


def refresh(energy: AbstractEnergy, state: KineticState) -> KineticState:
    """Recompute `(log_density, score)` at the state's position (one gradient), in the
    position's dtype."""
    logp, score = value_and_score_at(energy, state.position)
    return KineticState(
        position=state.position, momentum=state.momentum, log_density=logp, score=score
    )


def kick(state: KineticState, h, score: Array | None = None) -> KineticState:
    """B: `p ← p + h ∇log π` (with the state's cached score unless `score` is given)."""
    g = state.score if score is None else score
    return eqx.tree_at(lambda s: s.momentum, state, state.momentum + h * g)


def drift(state: KineticState, metric: AbstractMetric, h) -> KineticState:
    """A: `x ← x + h M⁻¹ p` (leaves `log_density`/`score` stale: call `refresh` after)."""
    return eqx.tree_at(
        lambda s: s.position, state, state.position + h * metric.velocity(state.momentum)
    )


def ou(state: KineticState, metric: AbstractMetric, h, friction, xi: Array) -> KineticState:
    """O: the exact Ornstein–Uhlenbeck flow of the momentum over time `h`, driven by the
    standard normal `xi` (shaped like the momentum)."""
    eta = jnp.exp(-friction * h)
    noise = metric.momentum_noise(xi)
    p = eta * state.momentum + jnp.sqrt(-jnp.expm1(-2.0 * friction * h)) * noise
    return eqx.tree_at(lambda s: s.momentum, state, p)


def momentum_norm(metric: AbstractMetric, p: Array) -> Array:
    """`|p|_{M⁻¹} = √(pᵀ M⁻¹ p)`, the length of the whitened velocity `M^{-1/2} p`."""
    return jnp.sqrt(2.0 * metric.kinetic_energy(p))


def _normalized(metric: AbstractMetric, p: Array) -> Array:
    return p / momentum_norm(metric, p)


def isokinetic(state: KineticState, metric: AbstractMetric, h) -> tuple[KineticState, Scalar]:
    """I: the exact isokinetic (ESH) velocity update over time `h`, in place of a kick.

    In whitened coordinates the momentum is a unit vector `u` and the score `g`; the update
    solves `du/dt = (I - uuᵀ) g / (d - 1)` in closed form (Steeg & Galstyan 2021; Robnik et
    al. 2023): with `δ = h|g|/(d-1)`, `ζ = e^{-δ}` and `e = g/|g|`,
    `u ← normalize(e (1 - ζ)(1 + ζ + u·e (1 - ζ)) + 2ζ u)`. It is written with `M⁻¹` only
    (`u·e = pᵀM⁻¹g/|g|`, `|g|² = gᵀM⁻¹g`), so it works for every metric; the momentum is kept
    at `|p|_{M⁻¹} = 1`.

    **Returns:** the new state and the kinetic-energy change of the isokinetic dynamics,
    `(d - 1) log(cosh δ + u·e sinh δ)` (computed through `ζ`, so it cannot overflow); it is
    what `-Δlog π` is added to for the energy error.
    """
    p, g = state.momentum, state.score
    dim = p.size
    gv = metric.velocity(g)
    g_norm = jnp.sqrt(jnp.maximum(jnp.sum(g * gv), 0.0))
    safe = jnp.where(g_norm > 0, g_norm, 1.0)
    p_len = momentum_norm(metric, p)
    proj = jnp.sum(p * gv) / (safe * p_len)  # u·e in whitened coordinates
    delta = h * g_norm / (dim - 1)
    zeta = jnp.exp(-delta)
    z2 = zeta * zeta
    raw = (g / safe) * ((1.0 - zeta) * (1.0 + zeta + proj * (1.0 - zeta))) + (2.0 * zeta) * (
        p / p_len
    )
    log_a = jnp.log(
        jnp.where(z2 <= 1.0, (1.0 + proj) * (1.0 - z2) + 2.0 * z2, (1.0 - proj) * (z2 - 1.0) + 2.0)
    )
    dk = (dim - 1) * (delta - math.log(2.0) + log_a)
    return eqx.tree_at(lambda s: s.momentum, state, _normalized(metric, raw)), dk


def partial_refresh(
    state: KineticState, metric: AbstractMetric, h, length, xi: Array
) -> KineticState:
    """The microcanonical partial velocity refresh over time `h`: `u ← normalize(u + ν ξ)` with
    `ν = √((e^{2h/L} - 1)/d)` (`L = length`, the momentum decoherence length; whitened
    coordinates, `xi` standard normal shaped like the momentum). `L = ∞` leaves `u` as it is."""
    p = state.momentum
    nu = jnp.sqrt(jnp.expm1(2.0 * h / length) / p.size)
    p = _normalized(metric, _normalized(metric, p) + nu * metric.momentum_noise(xi))
    return eqx.tree_at(lambda s: s.momentum, state, p)


def unit_momentum(metric: AbstractMetric, xi: Array) -> Array:
    """A uniformly random unit whitened velocity (`|p|_{M⁻¹} = 1`) from standard normal `xi`:
    the full velocity refresh of the microcanonical samplers."""
    return _normalized(metric, metric.momentum_noise(xi))


def _cubic_remainder(u):
    """`f(u) = u - 2(1 - e^{-u}) + (1 - e^{-2u})/2`, accurate for small `u` too."""
    direct = u + 2.0 * jnp.expm1(-u) - 0.5 * jnp.expm1(-2.0 * u)
    us = jnp.minimum(u, 0.1)
    series = sum(
        ((-1) ** k * (2.0 - 2.0 ** (k - 1)) / math.factorial(k)) * us**k for k in range(3, 13)
    )
    return jnp.where(u < 0.1, series, direct)


def linear_flow_coefficients(h, friction):
    """Coefficients of the exact flow of `dx = v dt, dv = -γ v dt + √(2γ) dW` over time `h`
    (unit mass): returns `(eta, x_from_v, std_v, x_from_noise_v, std_x_given_v)` with

    `v' = eta v + std_v ξ₁`, `x' = x + x_from_v v + x_from_noise_v ξ₁ + std_x_given_v ξ₂`.
    """
    u = friction * h
    eta = jnp.exp(-u)
    one_minus_eta = -jnp.expm1(-u)
    var_v = -jnp.expm1(-2.0 * u)
    cov_xv = one_minus_eta**2 / friction
    bracket = _cubic_remainder(u) - one_minus_eta**4 / (2.0 * var_v)
    var_x_given_v = 2.0 / friction**2 * jnp.maximum(bracket, 0.0)
    std_v = jnp.sqrt(var_v)
    return eta, one_minus_eta / friction, std_v, cov_xv / std_v, jnp.sqrt(var_x_given_v)


def linear_flow(
    state: KineticState, metric: AbstractMetric, h, friction, xi: Array
) -> KineticState:
    """U: the exact flow of A and O together over time `h` (correlated `(x, p)` increments),
    driven by standard normals `xi` of shape `(2, *momentum.shape)`.
    Leaves `log_density`/`score` stale: call `refresh` after."""
    eta, x_from_v, std_v, x_from_nv, std_x = linear_flow_coefficients(h, friction)
    xi1, xi2 = xi[0], xi[1]
    position = (
        state.position
        + x_from_v * metric.velocity(state.momentum)
        + metric.position_noise(x_from_nv * xi1 + std_x * xi2)
    )
    momentum = eta * state.momentum + metric.momentum_noise(std_v * xi1)
    return KineticState(
        position=position, momentum=momentum, log_density=state.log_density, score=state.score
    )


def hamiltonian(metric: AbstractMetric, state: KineticState) -> Scalar:
    """`H = -log π(x) + K(p)`."""
    return -state.log_density + metric.kinetic_energy(state.momentum)


def checked_hamiltonian(metric: AbstractMetric, state: KineticState) -> Scalar:
    """`H = -log π(x) + K(p)`, and NaN unless the score is finite too (`0·score` is folded into
    the kinetic energy's reduction, so the check costs no extra pass over the data)."""
    p = state.momentum
    k = jnp.sum(0.5 * p * metric.velocity(p) + 0.0 * state.score)
    return -state.log_density + k


# ---------------------------------------------------------------------------------------------
# The splitting core
# ---------------------------------------------------------------------------------------------


def _count_gradients(scheme) -> int:
    stale, n = False, 0
    for op, _ in scheme:
        if op in ("B", "I") and stale:
            stale, n = False, n + 1
        elif op in ("A", "U"):
            stale = True
    return n + int(stale)


class AbstractIntegrator(eqx.Module):
    """A splitting scheme of B (kick), A (drift), O (Ornstein–Uhlenbeck), U (exact A+O) and
    I (isokinetic velocity update) steps.

    Subclasses only declare `scheme`, a static tuple of `(op, fraction_of_step)` pairs, and the
    `order` of their (weak or symplectic) error. Hamiltonian integrators (no O/U step) are
    deterministic and time-reversible; Langevin ones need `friction` and `key`.
    """

    scheme: ClassVar[tuple[tuple[str, float], ...]]
    order: ClassVar[int]

    def step(
        self,
        energy: AbstractEnergy,
        metric: AbstractMetric,
        state: KineticState,
        step_size,
        *,
        friction=None,
        key: Key | None = None,
    ) -> tuple[KineticState, Scalar]:
        """One step of size `step_size` (may be negative for Hamiltonian schemes). The step
        size and friction are cast to the position's dtype (the state keeps its dtype); the new
        state carries fresh `log_density`/`score`.

        **Returns:** `(new_state, heat)` where `heat` is the kinetic energy injected by the
        stochastic sub-steps (0 for Hamiltonian schemes) minus the kinetic-energy change of the
        isokinetic sub-steps (which keep `K(p)` fixed), so that `ΔH - heat` is the energy error
        in every case.
        """
        dtype = jnp.result_type(state.position)
        step_size = jnp.asarray(step_size).astype(dtype)
        if friction is not None:
            friction = jnp.asarray(friction).astype(dtype)
        num_noise = sum({"O": 1, "U": 2}.get(op, 0) for op, _ in self.scheme)
        if num_noise and (key is None or friction is None):
            raise ValueError("this integrator is stochastic: pass `friction` and `key`.")
        if num_noise:  # all the step's Gaussian noise in one PRNG call
            assert key is not None  # checked above
            shape, dtype = jnp.shape(state.momentum), jnp.result_type(state.momentum)
            noise, _ = draws(key, (num_noise, *shape), 0, dtype)
        used = 0
        stale = False
        heat = jnp.zeros((), dtype)
        for op, c in self.scheme:
            h = c * step_size
            if op in ("B", "I"):
                if stale:
                    state, stale = refresh(energy, state), False
                if op == "B":
                    state = kick(state, h)
                else:
                    state, dk = isokinetic(state, metric, h)
                    heat = heat - dk
            elif op == "A":
                state, stale = drift(state, metric, h), True
            elif op in ("O", "U"):
                k_before = metric.kinetic_energy(state.momentum)
                if op == "O":
                    state = ou(state, metric, h, friction, noise[used])
                    used += 1
                else:
                    state = linear_flow(state, metric, h, friction, noise[used : used + 2])
                    used, stale = used + 2, True
                heat = heat + metric.kinetic_energy(state.momentum) - k_before
            else:  # pragma: no cover - schemes are static class constants
                raise ValueError(f"unknown splitting step {op!r}")
        if stale:
            state = refresh(energy, state)
        return state, heat

    @property
    def num_grad_evals(self) -> int:
        """Gradients of the log density per step."""
        return _count_gradients(self.scheme)

    @property
    def is_stochastic(self) -> bool:
        """Whether the scheme contains O or U steps."""
        return any(op in ("O", "U") for op, _ in self.scheme)


class Leapfrog(AbstractIntegrator):
    """Velocity Verlet: `B(h/2) A(h) B(h/2)`; 1 gradient per step, second order."""

    scheme: ClassVar = (("B", 0.5), ("A", 1.0), ("B", 0.5))
    order: ClassVar[int] = 2


_MCLACHLAN_B = 0.1931833275037836


class McLachlan(AbstractIntegrator):
    """The two-stage minimal-error scheme of McLachlan (1995), also Blanes et al. (2014):
    `B(b h) A(h/2) B((1-2b) h) A(h/2) B(b h)` with `b ≈ 0.19318`; 2 gradients per step, second
    order with a much smaller error constant than two leapfrog steps."""

    scheme: ClassVar = (
        ("B", _MCLACHLAN_B),
        ("A", 0.5),
        ("B", 1.0 - 2.0 * _MCLACHLAN_B),
        ("A", 0.5),
        ("B", _MCLACHLAN_B),
    )
    order: ClassVar[int] = 2


_Y1 = 1.0 / (2.0 - 2.0 ** (1.0 / 3.0))
_Y0 = -(2.0 ** (1.0 / 3.0)) / (2.0 - 2.0 ** (1.0 / 3.0))


class Yoshida(AbstractIntegrator):
    """Yoshida's (1990) fourth-order triple jump: leapfrog steps of `w₁h, w₀h, w₁h`
    (`w₁ = 1/(2 - 2^{1/3})`, `w₀ = 1 - 2w₁`); 3 gradients per step."""

    scheme: ClassVar = (
        ("B", 0.5 * _Y1),
        ("A", _Y1),
        ("B", 0.5 * (_Y1 + _Y0)),
        ("A", _Y0),
        ("B", 0.5 * (_Y1 + _Y0)),
        ("A", _Y1),
        ("B", 0.5 * _Y1),
    )
    order: ClassVar[int] = 4


class BAOAB(AbstractIntegrator):
    """Leimkuhler–Matthews BAOAB: `B(h/2) A(h/2) O(h) A(h/2) B(h/2)`; 1 gradient per step,
    second-order weak error (superconvergent configurational sampling)."""

    scheme: ClassVar = (("B", 0.5), ("A", 0.5), ("O", 1.0), ("A", 0.5), ("B", 0.5))
    order: ClassVar[int] = 2


class OBABO(AbstractIntegrator):
    """OBABO (Bussi–Parrinello): `O(h/2) B(h/2) A(h) B(h/2) O(h/2)`; 1 gradient per step."""

    scheme: ClassVar = (("O", 0.5), ("B", 0.5), ("A", 1.0), ("B", 0.5), ("O", 0.5))
    order: ClassVar[int] = 2


class UBU(AbstractIntegrator):
    """UBU (Sanz-Serna & Zygalakis 2021): exact A+O flows around a kick, strong order 2.

    Consecutive UBU steps `U(h/2) B(h) U(h/2)` only need the gradient at the kick, so the chain
    is stepped at its kicks: `B(h/2) U(h) B(h/2)` (the same Markov chain observed at the points
    where the force is evaluated, `U(h/2) U(h/2) = U(h)` in law), 1 gradient per step."""

    scheme: ClassVar = (("B", 0.5), ("U", 1.0), ("B", 0.5))
    order: ClassVar[int] = 2


def _isokinetic_scheme(scheme):
    """The same splitting with the isokinetic velocity update in place of every kick."""
    return tuple(("I" if op == "B" else op, c) for op, c in scheme)


class IsokineticLeapfrog(AbstractIntegrator):
    """Leapfrog with the isokinetic velocity update in place of the kick: `I(h/2) A(h) I(h/2)`;
    1 gradient per step (the microcanonical samplers' integrator)."""

    scheme: ClassVar = _isokinetic_scheme(Leapfrog.scheme)
    order: ClassVar[int] = 2


class IsokineticMcLachlan(AbstractIntegrator):
    """McLachlan's minimal-norm scheme with the isokinetic velocity update in place of the
    kick; 2 gradients per step."""

    scheme: ClassVar = _isokinetic_scheme(McLachlan.scheme)
    order: ClassVar[int] = 2


ISOKINETIC_INTEGRATORS: dict[str, type[AbstractIntegrator]] = {
    "leapfrog": IsokineticLeapfrog,
    "mclachlan": IsokineticMcLachlan,
}


def as_isokinetic_integrator(integrator, name: str = "integrator") -> AbstractIntegrator:
    """Resolve `"leapfrog"`/`"mclachlan"` or an isokinetic integrator instance (a scheme of I and
    A steps only)."""
    if isinstance(integrator, str):
        if integrator not in ISOKINETIC_INTEGRATORS:
            raise ValueError(
                f"unknown `{name}` {integrator!r}; choose from {sorted(ISOKINETIC_INTEGRATORS)}."
            )
        return ISOKINETIC_INTEGRATORS[integrator]()
    if not isinstance(integrator, AbstractIntegrator) or any(
        op not in ("I", "A") for op, _ in integrator.scheme
    ):
        raise ValueError(
            f"`{name}` must be 'leapfrog', 'mclachlan' or an isokinetic integrator, "
            f"got {integrator!r}."
        )
    return integrator


INTEGRATORS: dict[str, type[AbstractIntegrator]] = {
    "leapfrog": Leapfrog,
    "mclachlan": McLachlan,
    "yoshida": Yoshida,
    "BAOAB": BAOAB,
    "OBABO": OBABO,
    "UBU": UBU,
}


def as_integrator(integrator, *, stochastic: bool, name: str = "integrator") -> AbstractIntegrator:
    """Resolve a string name or an instance, checking that it is (or is not) stochastic."""
    if isinstance(integrator, str):
        if integrator not in INTEGRATORS:
            raise ValueError(f"unknown `{name}` {integrator!r}; choose from {sorted(INTEGRATORS)}.")
        integrator = INTEGRATORS[integrator]()
    if not isinstance(integrator, AbstractIntegrator):
        raise TypeError(f"`{name}` must be an AbstractIntegrator or a name, got {integrator!r}.")
    if any(op == "I" for op, _ in integrator.scheme):
        raise ValueError(
            f"`{name}` is an isokinetic integrator: it belongs to MCLMC or MAMS, got "
            f"{type(integrator).__name__}."
        )
    if integrator.is_stochastic != stochastic:
        kind = "a Langevin (BAOAB, OBABO, UBU)" if stochastic else "a Hamiltonian"
        raise ValueError(f"`{name}` must be {kind} integrator, got {type(integrator).__name__}.")
    return integrator
