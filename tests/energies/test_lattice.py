"""φ⁴ chain / lattice and U(1) gauge theory: definitions and independent checks of ground truth."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

import driftax.energies as de
from driftax.energies._lattice import chain_transfer_matrix_quadrature, u1_exact

# ----------------------------------------------------------------------------- φ⁴ chain


def _gl_energy_loop(phi, a, b, boundary="dirichlet"):
    """U(φ) of the Ginzburg–Landau chain written out term by term (flow_mcmc's definition)."""
    n = len(phi)
    if boundary == "dirichlet":
        padded = [0.0, *phi, 0.0]
        grad = sum((padded[i + 1] - padded[i]) ** 2 for i in range(n + 1))
    else:
        grad = sum((phi[(i + 1) % n] - phi[i]) ** 2 for i in range(n))
    local = sum((1 - p**2) ** 2 / 4 + b * p for p in phi)
    return a * n * grad / 2 + local / (a * n)


@pytest.mark.parametrize("boundary", ["dirichlet", "periodic"])
def test_phi4_chain_log_density_matches_term_by_term(x64, boundary):
    target = de.phi4(7, a=0.3, b=0.2, beta=3.0, boundary=boundary)
    x = np.random.default_rng(0).normal(size=7)
    expected = -3.0 * _gl_energy_loop(list(x), 0.3, 0.2, boundary)
    np.testing.assert_allclose(target.log_density(jnp.asarray(x)), expected, rtol=1e-12)
    assert target.event_shape == (7,)


def _grid_quadrature(target, half_width, num):
    """Brute-force tensor-grid quadrature of exp(log_density) (independent of the transfer matrix)."""
    g = np.linspace(-half_width, half_width, num)
    h = g[1] - g[0]
    mesh = np.stack(np.meshgrid(*([g] * target.n), indexing="ij"), -1).reshape(-1, target.n)
    lp = np.asarray(jax.jit(jax.vmap(target.log_density))(jnp.asarray(mesh)))
    shift = lp.max()
    w = np.exp(lp - shift)
    z = w.sum() * h**target.n
    mean = (w[:, None] * mesh).sum(0) * h**target.n / z
    var = (w[:, None] * (mesh - mean) ** 2).sum(0) * h**target.n / z
    return math.log(z) + shift, mean, var


def test_phi4_chain_transfer_matrix_vs_brute_force_n2(x64):
    # The bimodal benchmark's parameters, with a small field so that the mean is not zero.
    target = de.phi4(2, a=0.1, b=0.05, beta=20.0)
    log_z, mean, var = _grid_quadrature(target, 2.5, 1201)
    np.testing.assert_allclose(target.log_normalizer, log_z, rtol=0, atol=1e-9)
    np.testing.assert_allclose(target.mean, mean, atol=1e-9)
    np.testing.assert_allclose(target.variance, var, atol=1e-9)
    assert abs(mean[0]) > 0.1  # the check is not trivially at 0


@pytest.mark.parametrize("boundary", ["dirichlet", "periodic"])
def test_phi4_chain_transfer_matrix_vs_brute_force_n3(x64, boundary):
    target = de.phi4(3, a=0.5, b=0.3, beta=2.0, boundary=boundary)
    log_z, mean, var = _grid_quadrature(target, 6.0, 161)
    np.testing.assert_allclose(target.log_normalizer, log_z, rtol=0, atol=1e-8)
    np.testing.assert_allclose(target.mean, mean, atol=1e-8)
    np.testing.assert_allclose(target.variance, var, atol=1e-8)


def test_phi4_chain_symmetries_and_defaults(x64):
    target = de.phi4()
    assert target.event_shape == (64,) and (target.a, target.b, target.beta) == (0.1, 0.0, 20.0)
    # b = 0: exactly symmetric under φ → −φ: zero mean, mode weights 50/50.
    np.testing.assert_allclose(target.mean, 0.0, atol=1e-12)
    assert abs(target.mode_weight - 0.5) < 1e-12
    # Mirror symmetry i ↔ N+1−i of the Dirichlet chain.
    tilted = de.phi4(32, b=0.02)
    np.testing.assert_allclose(tilted.mean, tilted.mean[::-1], rtol=1e-10)
    np.testing.assert_allclose(tilted.variance, tilted.variance[::-1], rtol=1e-10)
    # b → −b is φ → −φ: same log Z, opposite mean and mode weight.
    flipped = de.phi4(32, b=-0.02)
    np.testing.assert_allclose(flipped.log_normalizer, tilted.log_normalizer, rtol=1e-12)
    np.testing.assert_allclose(flipped.mean, -tilted.mean, rtol=1e-10)
    np.testing.assert_allclose(flipped.mode_weight, 1.0 - tilted.mode_weight, atol=1e-12)
    assert tilted.mode_weight < 0.5  # a positive field favours the negative mode
    # The one-site marginals are densities whose moments are the stored ones.
    grid, dens = target.site_marginals()
    h = grid[1] - grid[0]
    np.testing.assert_allclose(dens.sum(-1) * h, 1.0, rtol=1e-12)
    np.testing.assert_allclose((dens * grid**2).sum(-1) * h, target.variance, rtol=1e-6)
    # A bimodal middle site: little mass at 0 compared to ±1.
    mid = dens[32]
    assert mid[np.argmin(np.abs(grid))] < 0.05 * mid[np.argmin(np.abs(grid - 1))]


def test_phi4_chain_quadrature_is_converged(x64):
    coarse = chain_transfer_matrix_quadrature(64, 0.1, 0.01, 20.0)
    fine = chain_transfer_matrix_quadrature(64, 0.1, 0.01, 20.0, half_width=7.0, num_points=2801)
    np.testing.assert_allclose(coarse["log_normalizer"], fine["log_normalizer"], atol=1e-9)
    np.testing.assert_allclose(coarse["mean"], fine["mean"], atol=1e-9)


def test_phi4_lattice_action(x64):
    target = de.phi4(4, variant="lattice", m2=-4.0, lam=5.0)
    assert target.event_shape == (4, 4)
    x = np.random.default_rng(1).normal(size=(4, 4))
    s = 0.0
    for i in range(4):
        for j in range(4):
            nb = x[(i + 1) % 4, j] + x[(i - 1) % 4, j] + x[i, (j + 1) % 4] + x[i, (j - 1) % 4]
            s += x[i, j] * (4 * x[i, j] - nb) - 4.0 * x[i, j] ** 2 + 5.0 * x[i, j] ** 4
    np.testing.assert_allclose(target.action(jnp.asarray(x)), s, rtol=1e-12)
    np.testing.assert_allclose(target.log_density(jnp.asarray(x)), -s, rtol=1e-12)
    np.testing.assert_allclose(target.log_density(jnp.asarray(-x)), -s, rtol=1e-12)
    default = de.phi4(variant="lattice")
    assert default.event_shape == (8, 8) and (default.m2, default.lam) == (-4.0, 8.0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"variant": "square"}, ValueError, "variant"),
        ({"variant": 2}, TypeError, "variant"),
        ({"n": 0}, ValueError, "`n`"),
        ({"n": 3.5}, ValueError, "`n`"),
        ({"a": -1.0}, ValueError, "`a`"),
        ({"beta": float("nan")}, ValueError, "`beta`"),
        ({"b": float("inf")}, ValueError, "`b`"),
        ({"boundary": "open"}, ValueError, "boundary"),
        ({"m2": 1.0}, TypeError, "m2"),
        ({"variant": "lattice", "a": 0.1}, TypeError, "`a`"),
        ({"variant": "lattice", "lam": 0.0}, ValueError, "lam"),
        ({"variant": "lattice", "n": 1}, ValueError, "`n`"),
        ({"variant": "lattice", "m2": float("nan")}, ValueError, "m2"),
    ],
)
def test_phi4_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        de.phi4(**kwargs)


# ----------------------------------------------------------------------------- U(1)


def test_u1_exact_plaquette_reference_value():
    assert abs(de.u1_lattice(8, 6.0).exact_plaquette - 0.91245) < 5e-6
    # Large volume: the infinite-volume limit I₁/I₀.
    assert abs(u1_exact(2.0, 10_000)[1] - special.i1(2.0) / special.i0(2.0)) < 1e-10


def _convolution_reference(beta, volume, m=256):
    """⟨cos θ_P⟩ and log Z from a real-space quadrature: the V plaquette angles of a periodic 2-D
    lattice are uniform and independent apart from the one constraint Σθ_P ≡ 0 (mod 2π), so the
    partition function is a V-fold circular convolution of f(θ) = exp(β(cos θ − 1)), computed
    here by direct summation on a uniform grid (no Bessel functions, no Fourier series)."""
    theta = 2 * np.pi * np.arange(m) / m
    f = np.exp(beta * (np.cos(theta) - 1.0))
    circ = f[(np.arange(m)[:, None] - np.arange(m)[None, :]) % m]  # circ[i, j] = f(θ_i − θ_j)
    g, log_scale = f.copy(), 0.0  # g_k = f ⊛ ... ⊛ f (k times), measure dθ/2π
    for _ in range(volume - 2):
        g = circ @ g / m
        log_scale += math.log(g.max())
        g = g / g.max()
    # g now holds g_{V-1}; ⟨cos θ_V⟩ with θ_V = −(θ_1 + ... + θ_{V-1}).
    g_minus = g[(-np.arange(m)) % m]
    weight = f * g_minus
    plaquette = (np.cos(theta) * weight).sum() / weight.sum()
    log_z = 2 * volume * math.log(2 * np.pi) + log_scale + math.log(weight.sum() / m)
    return log_z, plaquette


@pytest.mark.parametrize("L, beta", [(2, 1.0), (3, 2.5), (8, 6.0)])
def test_u1_exact_against_direct_convolution(x64, L, beta):
    target = de.u1_lattice(L, beta)
    log_z, plaquette = _convolution_reference(beta, L * L)
    np.testing.assert_allclose(target.exact_plaquette, plaquette, rtol=1e-10)
    np.testing.assert_allclose(target.log_normalizer, log_z, rtol=1e-10)


def test_u1_importance_sampling_check(x64):
    """Uniform link angles, importance-weighted by exp(−S): checks the action's wiring (the
    plaquette constraint) together with the exact formulas, with a tolerance from the MCSE."""
    target = de.u1_lattice(2, 1.0)
    n = 200_000
    x = jax.random.uniform(jax.random.key(3), (n, 2, 2, 2), minval=-np.pi, maxval=np.pi)
    lp = jax.jit(jax.vmap(target.log_density))(x)
    obs = jax.jit(jax.vmap(target.mean_plaquette))(x)
    w = np.exp(np.asarray(lp))
    obs = np.asarray(obs)
    est = (w * obs).sum() / w.sum()
    mcse = np.sqrt(np.sum(w**2 * (obs - est) ** 2)) / w.sum()  # delta-method SE of the ratio
    assert abs(est - target.exact_plaquette) < 5 * mcse
    # The independent-plaquette (infinite-volume) answer is far away: the test has power.
    assert abs(special.i1(1.0) / special.i0(1.0) - target.exact_plaquette) > 20 * mcse
    log_z = 8 * math.log(2 * np.pi) + math.log(w.mean())
    se_log_z = w.std() / (w.mean() * math.sqrt(n))
    assert abs(log_z - float(target.log_normalizer)) < 5 * se_log_z


def test_u1_gauge_invariance_and_charge(x64):
    L = 5
    target = de.u1_lattice(L, 3.0)
    assert target.event_shape == (2, L, L)
    k1, k2 = jax.random.split(jax.random.key(7))
    x = jax.random.uniform(k1, (2, L, L), minval=-np.pi, maxval=np.pi)
    alpha = jax.random.uniform(k2, (L, L), minval=-np.pi, maxval=np.pi)
    # θ_μ(n) → θ_μ(n) + α(n) − α(n + μ̂)
    gx = jnp.stack([x[0] + alpha - jnp.roll(alpha, -1, 0), x[1] + alpha - jnp.roll(alpha, -1, 1)])
    np.testing.assert_allclose(target.log_density(gx), target.log_density(x), rtol=1e-12)
    np.testing.assert_allclose(
        target.log_density(target.wrap(gx)), target.log_density(x), rtol=1e-12
    )
    q = target.topological_charge(x)
    np.testing.assert_allclose(q, np.round(q), atol=1e-10)
    np.testing.assert_allclose(target.topological_charge(gx), q, atol=1e-10)
    # Periodicity: shifting any link by 2π changes nothing.
    np.testing.assert_allclose(
        target.log_density(x.at[1, 2, 3].add(2 * np.pi)), target.log_density(x), rtol=1e-12
    )
    # The plaquette is wired as θ_0(n) + θ_1(n+0̂) − θ_0(n+1̂) − θ_1(n).
    xn = np.asarray(x)
    p = np.asarray(target.plaquettes(x))
    for n0, n1 in [(0, 0), (4, 2), (1, 4)]:
        ref = xn[0, n0, n1] + xn[1, (n0 + 1) % L, n1] - xn[0, n0, (n1 + 1) % L] - xn[1, n0, n1]
        np.testing.assert_allclose(p[n0, n1], ref, rtol=1e-12)


@pytest.mark.parametrize("q", [-2, 1, 3])
def test_u1_charge_of_constructed_configuration(x64, q):
    """A uniform-flux configuration of charge q: every plaquette equals 2πq/L²."""
    L = 6
    n0, n1 = np.meshgrid(np.arange(L), np.arange(L), indexing="ij")
    t1 = 2 * np.pi * q * n0 / L**2
    t0 = np.where(n0 == L - 1, -2 * np.pi * q * n1 / L, 0.0)
    x = jnp.asarray(np.stack([t0, t1]))
    target = de.u1_lattice(L, 1.0)
    np.testing.assert_allclose(
        np.asarray(target.wrap(target.plaquettes(x))), 2 * np.pi * q / L**2, atol=1e-12
    )
    np.testing.assert_allclose(target.topological_charge(x), q, atol=1e-10)


@pytest.mark.parametrize(
    "args, match",
    [((1, 1.0), "`L`"), ((2.5, 1.0), "`L`"), ((4, 0.0), "`beta`"), ((4, float("nan")), "`beta`")],
)
def test_u1_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        de.u1_lattice(*args)


def test_u1_rejects_wrong_shape():
    with pytest.raises(ValueError, match="event shape"):
        de.u1_lattice(4, 1.0).log_density(jnp.zeros((4, 4)))
