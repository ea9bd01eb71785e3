"""Lattice field theories: the φ⁴ chain / lattice and 2-D U(1) gauge theory, with exact ground truth
where one exists (transfer-matrix quadrature for the 1-D chain, Bessel sums for U(1))."""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from scipy import special

from .._checks import check_choice, check_int
from .._custom_types import Array, Point, Scalar, Shape
from ._base import (
    AbstractEnergy,
    AbstractKnownMoments,
    AbstractKnownNormalizer,
    check_event,
    check_finite,
    check_positive,
)

_LOG_2PI = math.log(2.0 * math.pi)


def _scalar(value, name: str) -> float:
    arr = check_finite(value, name)
    if np.ndim(arr) != 0:
        raise ValueError(f"`{name}` must be a scalar, got shape {np.shape(arr)}.")
    return float(arr)


# --------------------------------------------------------------------------------------------------
# φ⁴: the 1-D Ginzburg–Landau chain (transfer-matrix ground truth) and the 2-D lattice theory
# --------------------------------------------------------------------------------------------------


def _chain_site_log_weight(grid: np.ndarray, n: int, a: float, b: float, beta: float) -> np.ndarray:
    return -beta * ((1.0 - grid**2) ** 2 / 4.0 + b * grid) / (a * n)


def chain_transfer_matrix_quadrature(
    n: int,
    a: float,
    b: float,
    beta: float,
    boundary: str = "dirichlet",
    *,
    half_width: float | None = None,
    num_points: int | None = None,
) -> dict[str, Any]:
    """Exact (quadrature) log Z and one-site marginals of the Ginzburg–Landau chain, in NumPy.

    The density `exp(-β U(φ))` of the chain is a product of nearest-neighbour factors, so
    `Z = b₀ᵀ (D K)^{N-1} D b_{N+1} hᴺ` with `K(x, y) = exp(-β·(a·N/2)·(x − y)²)`, the site factor
    `D = diag(exp(-β·V(x)/(a·N)))` and the boundary vector `b(x) = exp(-β·(a·N/2)·x²)` (Dirichlet)
    on a uniform grid of spacing `h` (the trapezoidal rule is spectrally accurate for these smooth,
    rapidly decaying integrands). Periodic chains use `Z = tr((D K)ᴺ) hᴺ`.

    **Returns:** a dict with `log_normalizer`, per-site `mean` and `variance` (shape `(N,)`),
    `grid` (shape `(M,)`), `marginals` (shape `(N, M)`, densities on the grid) and `mode_weight`
    (`P(φ_{N//2} > 0)`, the statistic of Grenioux et al.).
    """
    coupling = beta * a * n / 2.0  # coefficient of (x - y)² in -log K
    kernel_std = 1.0 / math.sqrt(2.0 * coupling)
    spacing = min(0.02, kernel_std / 3.0)
    width = 5.0 if half_width is None else float(half_width)
    out: dict[str, Any] = {}
    for _ in range(4):
        m = num_points if num_points is not None else 2 * int(math.ceil(width / spacing)) + 1
        grid = np.linspace(-width, width, m)
        h = grid[1] - grid[0]
        log_site = _chain_site_log_weight(grid, n, a, b, beta) + math.log(h)
        kern = np.exp(-coupling * (grid[:, None] - grid[None, :]) ** 2)
        if boundary == "periodic":
            out = _periodic_chain(n, grid, log_site, kern)
        else:
            out = _dirichlet_chain(n, grid, log_site, kern, -coupling * grid**2)
        edge = out["marginals"][:, [0, -1]].max() * h
        if num_points is not None or half_width is not None or edge < 1e-14:
            break
        width *= 1.5  # the marginals are not negligible at the edges: widen the grid
    return out


def _normalize_rows(marg: np.ndarray, grid: np.ndarray) -> dict[str, Any]:
    h = grid[1] - grid[0]
    marg = marg / (marg.sum(axis=-1, keepdims=True) * h)
    mean = (marg * grid).sum(-1) * h
    var = (marg * (grid - mean[:, None]) ** 2).sum(-1) * h
    return {"marginals": marg, "mean": mean, "variance": var}


def _mode_weight(marg_row: np.ndarray, grid: np.ndarray) -> float:
    # Trapezoid on the symmetric grid: the point at 0 counts one half to each side.
    w = np.where(grid > 0, 1.0, np.where(grid == 0, 0.5, 0.0))
    return float((marg_row * w).sum() / marg_row.sum())


def _dirichlet_chain(n, grid, log_site, kern, log_boundary):
    m = grid.shape[0]
    site = np.exp(log_site)
    # Forward messages f_i(x): weight of sites 1..i with site i at x (site i's factor included),
    # stored as f_i = exp(log_scale[i]) * fwd[i] with max(fwd[i]) = 1.
    fwd = np.empty((n, m))
    log_scale = np.empty(n)
    first = log_boundary + log_site
    fwd[0], log_scale[0] = np.exp(first - first.max()), first.max()
    for i in range(1, n):
        v = (fwd[i - 1] @ kern) * site
        s = v.max()
        fwd[i], log_scale[i] = v / s, log_scale[i - 1] + math.log(s)
    log_z = log_scale[-1] + math.log(np.sum(fwd[-1] * np.exp(log_boundary)))
    # Backward messages g_i(x): weight of sites i+1..N (and the wall) given site i at x.
    bwd = np.empty((n, m))
    v = np.exp(log_boundary)
    bwd[-1] = v / v.max()
    for i in range(n - 2, -1, -1):
        v = kern @ (bwd[i + 1] * site)
        bwd[i] = v / v.max()
    out = _normalize_rows(fwd * bwd, grid)
    out["log_normalizer"] = float(log_z)
    out["grid"] = grid
    out["mode_weight"] = _mode_weight(out["marginals"][n // 2], grid)
    return out


def _periodic_chain(n, grid, log_site, kern):
    # Symmetric transfer matrix T = D^{1/2} K D^{1/2}; Z = tr Tᴺ = Σ λᴺ; p(x) ∝ Σ λᴺ u(x)².
    half = np.exp(0.5 * (log_site - log_site.max()))
    t = half[:, None] * kern * half[None, :]
    lam, vec = np.linalg.eigh(t)
    lam_max = lam[-1]
    ratio = lam / lam_max
    pw = np.sign(ratio) ** n * np.abs(ratio) ** n
    log_z = n * (math.log(lam_max) + log_site.max()) + math.log(pw.sum())
    marg = (vec**2 * pw[None, :]).sum(-1)
    out = _normalize_rows(np.broadcast_to(marg, (n, grid.shape[0])).copy(), grid)
    out["log_normalizer"] = float(log_z)
    out["grid"] = grid
    out["mode_weight"] = _mode_weight(out["marginals"][n // 2], grid)
    return out


class Phi4Chain(AbstractKnownNormalizer, AbstractKnownMoments):
    r"""The 1-D Ginzburg–Landau (φ⁴) chain of Gabrié, Rotskoff & Vanden-Eijnden (2022) and
    Grenioux et al. (2023), on `N` sites:

    `U(φ) = (a·N/2)·Σ_{i=0}^{N} (φ_{i+1} − φ_i)² + (1/(a·N))·Σ_{i=1}^{N} [(1 − φ_i²)²/4 + b·φ_i]`,
    `log_density(φ) = −β·U(φ)`,

    with Dirichlet boundaries `φ_0 = φ_{N+1} = 0` (default) or periodic ones (`φ_{N+1} = φ_1`,
    `N` differences). For `b = 0` the density is symmetric under `φ → −φ` and has two modes (all
    sites near `+1` or near `−1`), each of weight exactly 1/2.

    **Ground truth** (computed in NumPy at construction by transfer-matrix quadrature, see
    `chain_transfer_matrix_quadrature`): `log_normalizer`, the per-site `mean` and `variance`,
    `mode_weight = P(φ_{N//2} > 0)` and the one-site marginal densities (`site_marginals()`).

    **Checked against** `distribution/phi_four.py` of h2o64/flow_mcmc (itself taken from
    marylou-gabrie/adapt-flow-ergo): same `U` (gradient term `a·N·Σ(Δφ)²/2` over the `N+1`
    differences of the zero-padded field, local term divided by `a·N`). Differences: there,
    `log_prob = −U` and β enters the samplers as a temperature `1/β`; here β is part of
    `log_density`. Their optional `tilt` term is not implemented. Their benchmark uses
    `a = 0.1, b = 0, β = 20`, N ∈ {64, 128, 256}, and measures the mode weight on site `N//2`.
    """

    n: int = eqx.field(static=True)
    a: float = eqx.field(static=True)
    b: float = eqx.field(static=True)
    beta: float = eqx.field(static=True)
    boundary: str = eqx.field(static=True)
    event_shape: Shape = eqx.field(static=True)
    _log_normalizer: Array
    _mean: Array
    _variance: Array
    _mode_weight: float = eqx.field(static=True)

    def physical_energy(self, x: Point) -> Scalar:
        """`U(φ)` without the inverse temperature (`energy = β·U`)."""
        x = check_event(x, self.event_shape)
        if self.boundary == "dirichlet":
            padded = jnp.pad(x, 1)
            grad = jnp.sum((padded[1:] - padded[:-1]) ** 2)
        else:
            grad = jnp.sum((jnp.roll(x, -1) - x) ** 2)
        coef = self.a * self.n
        local = jnp.sum((1.0 - x**2) ** 2 / 4.0 + self.b * x)
        return 0.5 * coef * grad + local / coef

    def log_density(self, x: Point) -> Scalar:
        return -self.beta * self.physical_energy(x)

    # the exact values, computed once by quadrature when the target is built
    log_normalizer = property(lambda self: self._log_normalizer, doc="Exact `log Z`.")
    mean = property(lambda self: self._mean, doc="Exact mean of every site.")
    variance = property(lambda self: self._variance, doc="Exact variance of every site.")
    mode_weight = property(
        lambda self: self._mode_weight, doc="Exact `P(φ_{N//2} > 0)`: 0.5 when `b = 0`."
    )

    def site_marginals(self) -> tuple[np.ndarray, np.ndarray]:
        """The exact one-site marginal densities on a quadrature grid (NumPy, float64).

        **Returns:** `(grid, densities)` with shapes `(M,)` and `(N, M)`; each row integrates to 1.
        """
        out = chain_transfer_matrix_quadrature(self.n, self.a, self.b, self.beta, self.boundary)
        return out["grid"], out["marginals"]


class Phi4Lattice(AbstractEnergy):
    r"""2-D lattice φ⁴ theory on an `L×L` periodic lattice, in the parameterisation of Albergo,
    Kanwar & Shanahan (2019) (and their 2021 tutorial, and the AFT/CRAFT `phi_four_theory` target):

    `S(φ) = Σ_x [ Σ_{μ=1,2} (φ(x+μ̂) − φ(x))² + m²·φ(x)² + λ·φ(x)⁴ ]`, `log_density = −S`,

    i.e. kinetic term `Σ_x φ(x)·(4φ(x) − Σ_{±μ} φ(x±μ̂))` with no factor 1/2. Event shape `(L, L)`.
    The hopping-parameter form `(κ, λ̃)` maps to this one by rescaling `φ`. Defaults
    `m² = −4, λ = 8` (the tutorial's broken-symmetry example); CRAFT uses `14×14, m² = −4.75,
    λ = 5.1`. No exact ground truth: the density is symmetric under `φ → −φ`, so the magnetisation
    `Σφ` has mean 0.
    """

    size: int = eqx.field(static=True)
    m2: float = eqx.field(static=True)
    lam: float = eqx.field(static=True)
    event_shape: Shape = eqx.field(static=True)

    def action(self, x: Point) -> Scalar:
        """The lattice action `S(φ)` (`= energy(φ)`)."""
        x = check_event(x, self.event_shape)
        kinetic = jnp.sum((jnp.roll(x, -1, 0) - x) ** 2) + jnp.sum((jnp.roll(x, -1, 1) - x) ** 2)
        return kinetic + jnp.sum(self.m2 * x**2 + self.lam * x**4)

    def log_density(self, x: Point) -> Scalar:
        return -self.action(x)

    def magnetization(self, x: Point) -> Scalar:
        """`Σ_x φ(x)` of one configuration."""
        return jnp.sum(check_event(x, self.event_shape))


_PHI4_CHAIN_KEYS = ("a", "b", "beta", "boundary")
_PHI4_LATTICE_KEYS = ("m2", "lam")


def phi4(
    n: int | None = None,
    *,
    variant: str = "chain",
    a: float | None = None,
    b: float | None = None,
    beta: float | None = None,
    boundary: str | None = None,
    m2: float | None = None,
    lam: float | None = None,
) -> Phi4Chain | Phi4Lattice:
    """A φ⁴ target.

    **Arguments:**

    - `n`: number of sites of the chain (default 64), or the side `L` of the lattice (default 8).
    - `variant`: `"chain"` (default): the 1-D Ginzburg–Landau chain of Gabrié/Grenioux
      ([`Phi4Chain`][]; event shape `(n,)`, exact log Z and moments), or `"lattice"`: 2-D periodic
      lattice φ⁴ of Albergo et al. ([`Phi4Lattice`][]; event shape `(n, n)`).
    - `a`, `b`, `beta`, `boundary` (chain only): coupling (default 0.1), field (0.0), inverse
      temperature (20.0) and `"dirichlet"` (default) or `"periodic"`.
    - `m2`, `lam` (lattice only): `m²` (default −4.0) and `λ` (default 8.0).

    Passing a parameter of the other variant raises a `TypeError`.
    """
    variant = check_choice(variant, "variant", ("chain", "lattice"))
    given = {
        "a": a,
        "b": b,
        "beta": beta,
        "boundary": boundary,
        "m2": m2,
        "lam": lam,
    }
    foreign = _PHI4_LATTICE_KEYS if variant == "chain" else _PHI4_CHAIN_KEYS
    for k in foreign:
        if given[k] is not None:
            raise TypeError(f"`{k}` is not a parameter of the phi4 variant {variant!r}.")
    if variant == "lattice":
        size = check_int(8 if n is None else n, "n", 2)
        m2_ = _scalar(-4.0 if m2 is None else m2, "m2")
        lam_ = _scalar(8.0 if lam is None else lam, "lam")
        if lam_ <= 0:
            raise ValueError(
                f"`lam` must be positive (the density must be normalizable), got {lam!r}."
            )
        return Phi4Lattice(size=size, m2=m2_, lam=lam_, event_shape=(size, size))
    n_ = check_int(64 if n is None else n, "n", 1)
    a_ = float(check_positive(_scalar(0.1 if a is None else a, "a"), "a"))
    b_ = _scalar(0.0 if b is None else b, "b")
    beta_ = float(check_positive(_scalar(20.0 if beta is None else beta, "beta"), "beta"))
    bc = check_choice(
        "dirichlet" if boundary is None else boundary, "boundary", ("dirichlet", "periodic")
    )
    out = chain_transfer_matrix_quadrature(n_, a_, b_, beta_, bc)
    dtype = jnp.result_type(float)
    return Phi4Chain(
        n=n_,
        a=a_,
        b=b_,
        beta=beta_,
        boundary=bc,
        event_shape=(n_,),
        _log_normalizer=jnp.asarray(out["log_normalizer"], dtype),
        _mean=jnp.asarray(out["mean"], dtype),
        _variance=jnp.asarray(out["variance"], dtype),
        _mode_weight=float(out["mode_weight"]),
    )


# --------------------------------------------------------------------------------------------------
# 2-D U(1) lattice gauge theory
# --------------------------------------------------------------------------------------------------


def _wrap(theta):
    """Map angles to `[−π, π)`."""
    return jnp.mod(theta + jnp.pi, 2.0 * jnp.pi) - jnp.pi


def u1_exact(beta: float, volume: int) -> tuple[float, float]:
    """Exact finite-volume results of 2-D U(1) gauge theory with Wilson action on a periodic lattice
    of `volume = L²` plaquettes (NumPy/SciPy, float64).

    `Z = (2π)^{2V} e^{−βV} Σ_n I_n(β)^V` and `⟨cos θ_P⟩ = Σ_n I_n'(β) I_n(β)^{V−1} / Σ_n I_n(β)^V`,
    with `I_n' = (I_{n−1} + I_{n+1})/2`, evaluated with the scaled Bessel functions
    `ive(n, β) = e^{−β} I_n(β)` so that nothing overflows.

    **Returns:** `(log_normalizer, mean_plaquette)`.
    """
    beta = float(beta)
    nmax = int(beta) + 60  # I_n(β)/I_0(β) < 1e-30 beyond this order
    ive = special.ive(np.arange(-nmax - 1, nmax + 2), beta)  # orders -nmax-1 .. nmax+1
    inner, dive = ive[1:-1], 0.5 * (ive[:-2] + ive[2:])  # I_n and I_n' (scaled), n = -nmax..nmax
    with np.errstate(divide="ignore"):
        log_inner = np.log(inner)
        lse = np.logaddexp.reduce(volume * log_inner)
        log_num = np.logaddexp.reduce((volume - 1) * log_inner + np.log(dive))
    log_z = 2 * volume * _LOG_2PI + lse
    plaquette = float(np.exp(log_num - lse))
    return float(log_z), plaquette


class U1Lattice(AbstractKnownNormalizer):
    r"""2-D compact U(1) lattice gauge theory with the Wilson action on an `L×L` periodic lattice.

    **Layout:** event shape `(2, L, L)`; `x[μ, n₀, n₁] = θ_μ(n)` is the angle of the link leaving
    site `n = (n₀, n₁)` in direction `μ` (`μ = 0` along axis 0, `μ = 1` along axis 1).

    `θ_P(n) = θ_0(n) + θ_1(n+0̂) − θ_0(n+1̂) − θ_1(n)`, `S(θ) = β Σ_P (1 − cos θ_P)`,
    `log_density = −S`. The density is 2π-periodic in every link; its natural domain is the torus
    `[−π, π)^{2V}` (`V = L²`), on which `log_normalizer` is exact:
    `log Z = 2V·log 2π − βV + log Σ_n I_n(β)^V`. A sampler working on ℝ^{2V} sees a periodic
    (non-normalizable) density: wrap its states with `wrap(x)` before measuring.

    **Ground truth:** `exact_plaquette = ⟨cos θ_P⟩ = Σ_n I_n'(β) I_n(β)^{V−1} / Σ_n I_n(β)^V`
    (→ `I₁(β)/I₀(β)` as `V → ∞`; `L = 8, β = 6`: 0.91245). The topological charge
    `Q = (1/2π) Σ_P wrap(θ_P)` is an integer with mean 0.
    """

    size: int = eqx.field(static=True)
    beta: float = eqx.field(static=True)
    event_shape: Shape = eqx.field(static=True)

    def plaquettes(self, x: Point) -> Array:
        """The plaquette angles `θ_P(n)` (not wrapped), shape `(L, L)`."""
        x = check_event(x, self.event_shape)
        t0, t1 = x[0], x[1]
        return t0 + jnp.roll(t1, -1, axis=0) - jnp.roll(t0, -1, axis=1) - t1

    def action(self, x: Point) -> Scalar:
        """The Wilson action `S(θ) = β Σ_P (1 − cos θ_P)` (`= energy(x)`)."""
        return self.beta * jnp.sum(1.0 - jnp.cos(self.plaquettes(x)))

    def log_density(self, x: Point) -> Scalar:
        return -self.action(x)

    def mean_plaquette(self, x: Point) -> Scalar:
        """`(1/V) Σ_P cos θ_P` of one configuration (its expectation is `exact_plaquette`)."""
        return jnp.mean(jnp.cos(self.plaquettes(x)))

    def topological_charge(self, x: Point) -> Scalar:
        """`Q = (1/2π) Σ_P wrap(θ_P)`, an integer (as a float) for every configuration."""
        return jnp.sum(_wrap(self.plaquettes(x))) / (2.0 * jnp.pi)

    def wrap(self, x: Point) -> Point:
        """Map link angles to `[−π, π)` (the same configuration, same density)."""
        return _wrap(x)

    @property
    def exact_plaquette(self) -> float:
        """Exact finite-volume `⟨cos θ_P⟩` (see `u1_exact`)."""
        return u1_exact(self.beta, self.size**2)[1]

    @property
    def log_normalizer(self) -> Scalar:
        return jnp.asarray(u1_exact(self.beta, self.size**2)[0], jnp.result_type(float))


def u1_lattice(L: int = 8, beta: float = 6.0) -> U1Lattice:
    """2-D U(1) lattice gauge theory on an `L×L` periodic lattice at coupling `beta`
    ([`U1Lattice`][]; event shape `(2, L, L)`, exact log Z and plaquette expectation).

    **Arguments:**

    - `L`: lattice side, an int ≥ 2 (default 8).
    - `beta`: the inverse coupling β > 0 (default 6.0).
    """
    size = check_int(L, "L", 2)
    beta_ = float(check_positive(_scalar(beta, "beta"), "beta"))
    return U1Lattice(size=size, beta=beta_, event_shape=(2, size, size))
