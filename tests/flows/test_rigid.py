"""Quaternion (rigid-body orientation) flows: the Hopf chart and its uniform measure, the base,
normalisation on S³ and SO(3), rotation matrices, bad input, and a reverse-KL fit to a matrix
Fisher distribution whose normaliser is computed independently by quadrature.

(Log-dets against the tangent-space Jacobian and inverse round trips: the conformance test of
tests/flows/test_bijections.py, entries `quaternion_*`.)
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats

import driftax.flows as fl
from driftax.energies._base import AbstractEnergy

from .test_bijections import _randomize


def _uniform_quaternions(key, n):
    g = jax.random.normal(key, (n, 4))
    return g / jnp.linalg.norm(g, axis=-1, keepdims=True)


def test_hopf_chart_round_trip_and_uniform_measure(x64):
    """`from_hopf(to_hopf(q)) = q`, and under the uniform distribution on S³ the Hopf coordinates
    are independent uniforms on [0, 1] × [−π, π)² (the chart's measure is uniform)."""
    q = _uniform_quaternions(jax.random.key(0), 4000)
    u, xi1, xi2 = fl.to_hopf(q)
    np.testing.assert_allclose(fl.from_hopf(u, xi1, xi2), q, atol=1e-12)
    assert scipy.stats.kstest(np.asarray(u), "uniform").pvalue > 1e-3
    for xi in (xi1, xi2):
        assert (
            scipy.stats.kstest(np.asarray(xi), "uniform", args=(-math.pi, 2 * math.pi)).pvalue
            > 1e-3
        )
    # the chart normalises its input
    np.testing.assert_allclose(fl.to_hopf(3.0 * q[:5])[0], u[:5], atol=1e-12)


def test_uniform_base():
    base = fl.UniformQuaternions(3)
    x = base.sample(jax.random.key(1), (7,))
    assert x.shape == (7, 3, 4)
    np.testing.assert_allclose(jnp.linalg.norm(x, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(base.log_density(x[0]), -3 * math.log(2 * math.pi**2), rtol=1e-6)


@pytest.fixture(scope="module")
def random_flow():
    """A randomized (non-identity) two-body quaternion flow, float64."""
    with jax.enable_x64(True):
        flow = fl.quaternion_flow(jax.random.key(2), 2, num_layers=2, num_components=3, hidden=8)
        return _randomize(flow, jax.random.key(3), scale=0.4)


def test_flow_normalises_on_s3_and_so3(x64, random_flow):
    """∫ q dS = 1 over (S³)² and ∫ q_rot dV = 1 over SO(3)², by importance sampling from the
    uniform distribution (MCSE-based tolerance); draws are unit quaternions whose forward and
    inverse log densities agree."""
    n = 20_000
    q = jax.vmap(lambda k: _uniform_quaternions(k, 2))(jax.random.split(jax.random.key(4), n))
    log_q = eqx.filter_jit(lambda f, q: jax.vmap(f.log_density)(q))(random_flow, q)
    ratio = np.exp(np.asarray(log_q) + 2 * math.log(2 * math.pi**2))
    mcse = ratio.std() / math.sqrt(n)
    assert abs(ratio.mean() - 1.0) < 4 * mcse + 1e-3, (ratio.mean(), mcse)
    rot = eqx.filter_jit(lambda f, q: jax.vmap(lambda x: fl.rotation_log_density(f, x))(q))
    log_rot = rot(random_flow, q[:5000])
    ratio = np.exp(np.asarray(log_rot) + 2 * math.log(math.pi**2))
    mcse = ratio.std() / math.sqrt(5000)
    assert abs(ratio.mean() - 1.0) < 4 * mcse + 1e-3, (ratio.mean(), mcse)
    x, log_q_fwd = random_flow.sample_and_log_density(jax.random.key(5), (16,))
    np.testing.assert_allclose(jnp.linalg.norm(x, axis=-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(jax.vmap(random_flow.log_density)(x), log_q_fwd, atol=1e-8)


def test_uniform_rotation_density_is_haar():
    """The uniform distribution of quaternions gives rotations of density 1/π² per body."""
    flow = fl.Flow(fl.UniformQuaternions(3), fl.Affine(jnp.zeros((3, 4)), jnp.ones((3, 4))))
    q = fl.UniformQuaternions(3).sample(jax.random.key(1))
    np.testing.assert_allclose(
        fl.rotation_log_density(flow, q), -3 * math.log(math.pi**2), rtol=1e-5
    )


def test_rotation_matrices(x64):
    q = _uniform_quaternions(jax.random.key(6), 64)
    r = fl.quaternion_to_rotation(q)
    np.testing.assert_allclose(
        jnp.einsum("nij,nkj->nik", r, r), np.broadcast_to(np.eye(3), r.shape), atol=1e-12
    )
    np.testing.assert_allclose(jnp.linalg.det(r), 1.0, atol=1e-12)
    np.testing.assert_allclose(fl.quaternion_to_rotation(-q), r, atol=1e-12)
    # a quarter turn about z
    c = math.cos(math.pi / 4)
    quarter = fl.quaternion_to_rotation(jnp.array([c, 0.0, 0.0, c]))
    np.testing.assert_allclose(quarter, [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    # rotation -> quaternion up to sign, also for half turns (real part 0)
    half = jnp.array([[0.0, 1.0, 0.0, 0.0], [0.0, 0.6, 0.8, 0.0], [0.0, 0.0, 0.0, 1.0]])
    for qs in (q, half):
        back = fl.rotation_to_quaternion(fl.quaternion_to_rotation(qs))
        sign = jnp.sign(jnp.sum(back * qs, axis=-1, keepdims=True))
        np.testing.assert_allclose(back, sign * qs, atol=1e-10)
        assert np.all(np.asarray(back[:, 0]) >= 0)


def test_bad_input_raises(key):
    with pytest.raises(ValueError, match="num_bodies"):
        fl.quaternion_flow(key, 0)
    with pytest.raises(ValueError, match="coordinate"):
        fl.QuaternionCoupling(key, 1, coordinate=3)
    with pytest.raises(ValueError, match="num_components"):
        fl.quaternion_flow(key, 1, num_components=0)
    with pytest.raises(ValueError, match="q"):
        fl.quaternion_to_rotation(jnp.ones(3))
    with pytest.raises(ValueError, match="rotation"):
        fl.rotation_to_quaternion(jnp.ones((3, 4)))
    big = fl.quaternion_flow(key, 13, num_layers=1, num_components=2, hidden=4)
    with pytest.raises(ValueError, match="bodies"):
        fl.rotation_log_density(big, jnp.ones((13, 4)))
    flat = fl.coupling_flow(key, 4, num_layers=1, hidden=4)
    with pytest.raises(ValueError, match="num_bodies, 4"):
        fl.rotation_log_density(flat, jnp.ones(4))


class MatrixFisher(AbstractEnergy):
    """p(R) ∝ exp(tr(Fᵀ R)) on SO(3), as an energy of one quaternion `(1, 4)` (bimodal on S³:
    `q` and `−q`)."""

    f: jax.Array
    event_shape: tuple = eqx.field(static=True)

    def __init__(self, f):
        self.f = f
        self.event_shape = (1, 4)

    def log_density(self, x):
        return jnp.sum(self.f * fl.quaternion_to_rotation(x[0]))


def _log_z_by_quadrature(energy, m=64):
    """log ∫_{S³} p̃ dS on Hopf coordinates with `u = sin²η` (dS = sin η cos η dη dξ₁ dξ₂):
    Gauss–Legendre in η ∈ [0, π/2], the periodic trapezoid rule in the angles; the integrand
    is smooth in all three, so both converge spectrally."""
    nodes, weights = np.polynomial.legendre.leggauss(m)
    eta = 0.25 * math.pi * (nodes + 1.0)
    w_eta = 0.25 * math.pi * weights * np.sin(eta) * np.cos(eta)
    xi = -math.pi + 2 * math.pi * np.arange(m) / m
    ee, a, b = np.meshgrid(eta, xi, xi, indexing="ij")
    u = np.sin(ee.ravel()) ** 2
    q = fl.from_hopf(jnp.asarray(u), jnp.asarray(a.ravel()), jnp.asarray(b.ravel()))
    logp = np.asarray(jax.vmap(energy.log_density)(q[:, None, :]))
    log_w = np.log(np.repeat(w_eta, m * m)) + 2 * math.log(2 * math.pi / m)
    return float(jax.nn.logsumexp(jnp.asarray(logp + log_w)))


def test_quadrature_reference_matches_monte_carlo(x64):
    """The quadrature normaliser of the test target agrees with plain Monte Carlo."""
    energy = MatrixFisher(jnp.diag(jnp.array([3.0, 1.5, -1.0])))
    log_z = _log_z_by_quadrature(energy)
    q = _uniform_quaternions(jax.random.key(7), 200_000)
    w = np.exp(np.asarray(jax.vmap(energy.log_density)(q[:, None, :])) - log_z) * 2 * math.pi**2
    assert abs(w.mean() - 1.0) < 4 * w.std() / math.sqrt(w.size)
    assert abs(_log_z_by_quadrature(energy, 40) - log_z) < 1e-8


@pytest.mark.slow
def test_reverse_kl_fit_to_matrix_fisher(x64):
    """A quaternion flow trained by reverse KL on a matrix Fisher distribution (both antipodal
    modes on S³) reaches the quadrature log Z by importance sampling, with a high ESS."""
    energy = MatrixFisher(jnp.diag(jnp.array([3.0, 1.5, -1.0])))
    log_z = _log_z_by_quadrature(energy)
    flow = fl.quaternion_flow(jax.random.key(8), 1, num_layers=3, num_components=6, hidden=32)
    flow, losses = fl.fit_reverse_kl(
        flow,
        energy,
        key=jax.random.key(9),
        optimizer=optax.adam(3e-3),
        num_steps=600,
        batch_size=128,
    )
    diag = fl.importance_diagnostics(
        flow, energy, key=jax.random.key(10), num_samples=20_000, log_normalizer=log_z
    )
    assert diag["num_nonfinite"] == 0
    assert diag["ess_fraction"] > 0.8, diag
    assert abs(diag["log_normalizer"] - log_z) < 0.01, (diag, log_z)
    assert diag["reverse_kl"] < 0.05, diag
