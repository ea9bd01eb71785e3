"""The splitting core: convergence orders, time reversibility, gradient counts, the exact linear
flow (U) and the stationary bias of the Langevin schemes on a Gaussian."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad

import driftax.energies as de
import driftax.samplers as ds
from driftax.samplers._integrators import linear_flow, linear_flow_coefficients

from .registry import HAMILTONIAN_INTEGRATORS, LANGEVIN_INTEGRATORS


def _anharmonic():
    # a smooth non-Gaussian target so that no error term vanishes by symmetry
    return de.from_log_density(
        lambda x: -0.5 * jnp.sum(x**2 / jnp.array([1.0, 0.5, 2.0])) - 0.1 * jnp.sum(x**4),
        jnp.zeros(3),
    )


def _state(energy, x, p):
    logp, score = energy.value_and_score(x)
    return ds.KineticState(position=x, momentum=p, log_density=logp, score=score)


@eqx.filter_jit
def _trajectory(integrator, energy, metric, z, h, n):
    """`n` steps of size `h` (both traced: one compilation per integrator and metric); returns the
    end state and the largest energy error along the way."""
    h0 = -z.log_density + metric.kinetic_energy(z.momentum)

    def body(_, carry):
        z, err = carry
        z = integrator.step(energy, metric, z, h)[0]
        e = jnp.abs(-z.log_density + metric.kinetic_energy(z.momentum) - h0)
        return z, jnp.maximum(err, e)

    return jax.lax.fori_loop(0, n, body, (z, jnp.zeros_like(h0)))


def _errors(integrator, metric):
    energy = _anharmonic()
    z0 = _state(energy, jnp.array([0.8, -0.5, 1.2]), jnp.array([0.3, 0.9, -0.6]))
    ref, _ = _trajectory(ds.Yoshida(), energy, metric, z0, 1.0 / 2048, 2048)
    out = []
    for n in (8, 16, 32, 64):
        end, err = _trajectory(integrator, energy, metric, z0, 1.0 / n, n)
        out.append((float(err), float(jnp.max(jnp.abs(end.position - ref.position)))))
    return np.array(out)


@pytest.mark.parametrize("cls", HAMILTONIAN_INTEGRATORS)
def test_hamiltonian_order(cls, x64):
    """Energy error (max along the trajectory) and global position error ∝ hᵖ."""
    integrator = cls()
    errs = _errors(integrator, ds.DiagonalMetric(jnp.array([1.0, 0.7, 1.5])))
    slopes = -np.diff(np.log2(errs), axis=0)  # halving h divides the error by 2**order
    energy_slope, position_slope = np.median(slopes, axis=0)
    assert abs(energy_slope - cls.order) < 0.35, (cls.__name__, slopes)
    assert abs(position_slope - cls.order) < 0.35, (cls.__name__, slopes)


@pytest.mark.parametrize("cls", HAMILTONIAN_INTEGRATORS)
def test_time_reversible(cls, x64):
    """Forward, flip the momentum, forward again: back to the start to round-off (dense metric,
    the most general); a negative step size integrates backwards."""
    m = ds.DenseMetric(jnp.array([[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 2.0]]))
    energy = _anharmonic()
    z0 = _state(energy, jnp.array([0.8, -0.5, 1.2]), jnp.array([0.3, 0.9, -0.6]))
    h = jnp.asarray(0.1)
    z1, _ = _trajectory(cls(), energy, m, z0, h, 25)
    back = eqx.tree_at(lambda z: z.momentum, z1, -z1.momentum)
    z2, _ = _trajectory(cls(), energy, m, back, h, 25)
    np.testing.assert_allclose(z2.position, z0.position, atol=1e-12)
    np.testing.assert_allclose(-z2.momentum, z0.momentum, atol=1e-12)
    z3, _ = _trajectory(cls(), energy, m, z1, -h, 25)
    np.testing.assert_allclose(z3.position, z0.position, atol=1e-12)


def test_gradient_counts():
    counts = {ds.Leapfrog: 1, ds.McLachlan: 2, ds.Yoshida: 3, ds.BAOAB: 1, ds.OBABO: 1, ds.UBU: 1}
    for cls, n in counts.items():
        assert cls().num_grad_evals == n, cls.__name__


def test_integrator_by_name_and_kind():
    assert isinstance(ds.HMC(step_size=0.1, integrator="yoshida").integrator, ds.Yoshida)
    assert isinstance(ds.UnderdampedLangevin(step_size=0.1, integrator="UBU").integrator, ds.UBU)
    with pytest.raises(ValueError, match="integrator"):
        ds.HMC(step_size=0.1, integrator="BAOAB")
    with pytest.raises(ValueError, match="integrator"):
        ds.UnderdampedLangevin(step_size=0.1, integrator="leapfrog")
    with pytest.raises(ValueError, match="integrator"):
        ds.UnderdampedLangevin(step_size=0.1, integrator="RK4")


# ---------------------------------------------------------------------------------------------
# The exact linear flow U
# ---------------------------------------------------------------------------------------------


def _u_cov(h, gamma, metric, n=200_000):
    z = ds.KineticState(
        position=jnp.zeros(2), momentum=jnp.zeros(2), log_density=jnp.zeros(()), score=jnp.zeros(2)
    )
    keys = jax.random.split(jax.random.key(1), n)
    out = jax.jit(
        jax.vmap(lambda k: linear_flow(z, metric, h, gamma, jax.random.normal(k, (2, 2))))
    )(keys)
    v = jnp.concatenate([out.position, out.momentum], axis=1)
    return np.cov(np.asarray(v).T)


def test_linear_flow_covariance_and_semigroup(x64):
    """U(h) from rest has the exact OU covariance, and U(h/2)∘U(h/2) = U(h) in law."""
    gamma, h = 1.3, 0.7
    metric = ds.DiagonalMetric(jnp.array([1.0, 0.25]))
    c = _u_cov(h, gamma, metric)
    # closed forms for unit mass, scaled by the metric (M⁻¹ = diag(1, 0.25))
    u = gamma * h
    var_v = 1 - np.exp(-2 * u)
    var_x = 2 / gamma**2 * (u - 2 * (1 - np.exp(-u)) + (1 - np.exp(-2 * u)) / 2)
    cov_xv = (1 - np.exp(-u)) ** 2 / gamma
    minv = np.array([1.0, 0.25])
    np.testing.assert_allclose(np.diag(c)[:2], var_x * minv, rtol=0.01)
    np.testing.assert_allclose(np.diag(c)[2:], var_v / minv, rtol=0.01)
    np.testing.assert_allclose([c[0, 2], c[1, 3]], [cov_xv, cov_xv], rtol=0.01)

    # two half steps from rest, composed by hand
    z = ds.KineticState(
        position=jnp.zeros(2), momentum=jnp.zeros(2), log_density=jnp.zeros(()), score=jnp.zeros(2)
    )

    def two(k):
        xi = jax.random.normal(k, (4, 2))
        return linear_flow(
            linear_flow(z, metric, h / 2, gamma, xi[:2]), metric, h / 2, gamma, xi[2:]
        )

    out = jax.jit(jax.vmap(two))(jax.random.split(jax.random.key(2), 200_000))
    c2 = np.cov(np.asarray(jnp.concatenate([out.position, out.momentum], axis=1)).T)
    np.testing.assert_allclose(c2, c, rtol=0.02, atol=2e-3 * np.abs(c).max())


def test_linear_flow_coefficients_small_friction_limit(x64):
    # var_x ~ 2γt³/3 and the conditional variance ~ γt³/6 for small γt; continuous at the switch
    for u in (1e-6, 1e-3, 0.0999999, 0.1000001, 0.5):
        gamma = 1.0
        eta, xv, sv, xnv, sx = (float(a) for a in linear_flow_coefficients(u, gamma))
        assert abs(xv - (1 - np.exp(-u))) < 1e-12
        var_x = xnv**2 + sx**2
        # Var ∫₀ᵘ √2 (1 - e^{-s}) dW_s by quadrature
        exact = quad(lambda s: 2 * (-np.expm1(-s)) ** 2, 0, u, epsabs=0, epsrel=1e-13)[0]
        assert abs(var_x - exact) <= 1e-8 * exact


# ---------------------------------------------------------------------------------------------
# Stationary bias of the Langevin schemes on a 1-D Gaussian, via the exact Lyapunov equation
# ---------------------------------------------------------------------------------------------


@eqx.filter_jit
def _step_map(integrator, h, gamma, keys):
    """The step map z -> A z + b(ξ) on N(0, 1): A by autodiff and b over many keys."""
    energy = de.gaussian(jnp.zeros(1, jnp.float64))
    metric = ds.IdentityMetric()

    def step(zvec, key):
        z = _state(energy, zvec[:1], zvec[1:])
        z = integrator.step(energy, metric, z, h, friction=gamma, key=key)[0]
        return jnp.concatenate([z.position, z.momentum])

    zero = jnp.zeros(2)
    return jax.jacfwd(step)(zero, keys[0]), jax.vmap(lambda k: step(zero, k))(keys)


def _stationary_cov(integrator, h, gamma, keys):
    """Solve Σ = A Σ Aᵀ + Q with Q = E[b bᵀ] estimated over the keys."""
    a, b = (np.asarray(v) for v in _step_map(integrator, jnp.asarray(h), jnp.asarray(gamma), keys))
    q = b.T @ b / len(b)
    # vec(Σ) = (I - A⊗A)^{-1} vec(Q)
    return np.linalg.solve(np.eye(4) - np.kron(a, a), q.reshape(-1)).reshape(2, 2)


@pytest.mark.parametrize("cls", LANGEVIN_INTEGRATORS)
def test_langevin_stationary_bias_rates(cls, x64):
    keys = jax.random.split(jax.random.key(0), 200_000)
    gamma = 1.0
    biases = []
    for h in (0.25, 0.5, 1.0):
        sigma = _stationary_cov(cls(), h, gamma, keys)
        biases.append(sigma[0, 0] - 1.0)
    biases = np.abs(biases)
    mc = 4 * np.sqrt(2 / len(keys))  # ~4 standard errors of a variance from Q's estimate
    if cls is ds.BAOAB:
        # BAOAB samples the configuration of a harmonic oscillator exactly at any stable h
        assert np.all(biases < mc), biases
    else:
        # second order: halving h divides the bias by ~4
        assert biases[-1] > 5 * mc
        ratio = biases[2] / biases[1]
        assert 2.5 < ratio < 6.5, (cls.__name__, biases)


def test_fused_threefry_matches_jax():
    """The straight-line Threefry-2x32 the kernels draw their noise from is JAX's cipher."""
    from jax._src.random.threefry2x32 import threefry_2x32

    from driftax.samplers._random import draws, threefry2x32

    k = jnp.array([123, 456], jnp.uint32)
    c = jnp.arange(20, dtype=jnp.uint32)
    a, b = threefry2x32(k[0], k[1], c[:10], c[10:])
    np.testing.assert_array_equal(np.concatenate([a, b]), np.asarray(threefry_2x32(k, c)))
    z, u = draws(jax.random.key(0), (50_000,), 4, jnp.float32)
    assert abs(float(z.mean())) < 0.03 and abs(float(z.std()) - 1) < 0.02
    assert np.all((np.asarray(u) > 0) & (np.asarray(u) < 1))


def test_uniforms_never_reach_the_ends(x64):
    """All-ones and all-zeros words give uniforms strictly inside (0, 1) (finite normals)."""
    from driftax.samplers._random import _uniform_open

    for dtype, words in (
        (jnp.float32, [0, 0xFFFFFFFF]),
        (jnp.float64, [0, 0, 2**32 - 1, 2**32 - 1]),
    ):
        u = np.asarray(_uniform_open(jnp.array(words, jnp.uint32), dtype))
        assert np.all((u > 0) & (u < 1))
        assert np.all(np.isfinite(np.asarray(jax.scipy.special.ndtri(jnp.asarray(u)))))
