"""Multimarginal (simplex-time) stochastic interpolants and the kinetic-optimal Gaussian path:
vertex marginals exact, the exact Gaussian velocities against the marginals' time derivative
(jax.jacfwd), transport along edges and paths, a trained velocity against the closed form, and
the kinetic-optimal path's minimal energy.

Sized (CPU): the trained velocity takes 750 Adam steps (its tolerances unchanged)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import driftax.diffusion as dd

MEANS = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
COVS = np.stack([np.eye(2), [[1.0, 0.5], [0.5, 1.0]], 0.3 * np.eye(2)])


def _fields(gamma_scale=1.0):
    it = dd.MultimarginalInterpolant(3, gamma_scale=gamma_scale)
    return dd.MultimarginalGaussianFields(it, MEANS, COVS)


def _affine_map(points_in, points_out):
    """The affine map sending the 3 points `points_in` to `points_out` (2-D): (A, b)."""
    a = np.linalg.solve(np.asarray(points_in[1:] - points_in[0]), points_out[1:] - points_out[0])
    a = a.T
    return a, np.asarray(points_out[0]) - a @ np.asarray(points_in[0])


# ------------------------------------------------------------------------------- exact


def test_vertices_are_the_marginals(x64):
    """At a vertex gamma = 0: the interpolant is that marginal's sample, and the exact law is
    that marginal."""
    it = dd.MultimarginalInterpolant(3, gamma_scale=1.3)
    xs = jax.random.normal(jax.random.key(0), (3, 2))
    z = jax.random.normal(jax.random.key(1), (2,))
    f = _fields()
    for k in range(3):
        np.testing.assert_array_equal(it.interpolate(it.vertex(k), xs, z), xs[k])
        mean, cov = f.marginal(it.vertex(k))
        np.testing.assert_allclose(mean, MEANS[k], atol=1e-14)
        np.testing.assert_allclose(cov, COVS[k], atol=1e-14)
    # on an edge gamma is gamma_scale sqrt(2 t (1 - t))
    t = 0.3
    np.testing.assert_allclose(it.gamma(jnp.array([1 - t, t, 0.0])), 1.3 * np.sqrt(2 * t * (1 - t)))


@pytest.mark.parametrize("gamma_scale", [0.0, 1.0])
def test_exact_velocities_transport_the_marginals(x64, gamma_scale):
    """Along alpha(t) through the simplex interior, d mean/dt = v(mean) and d cov/dt = B cov +
    cov B^T (B = ∂v/∂x) with v = sum_k alpha_k' g_k: the exact fields carry the law."""
    f = _fields(gamma_scale)
    a0, a1 = jnp.array([0.6, 0.3, 0.1]), jnp.array([0.1, 0.2, 0.7])
    x = jnp.array([0.4, -0.7])
    for t in (0.2, 0.5, 0.9):

        def law(s):
            return f.marginal((1 - s) * a0 + s * a1)

        (mean, cov), (dmean, dcov) = jax.jvp(law, (jnp.asarray(t),), (jnp.asarray(1.0),))
        alpha = (1 - t) * a0 + t * a1

        def v(y, alpha=alpha):
            return (a1 - a0) @ f.velocities(alpha, y)

        b = jax.jacfwd(v)(x)
        np.testing.assert_allclose(v(mean), dmean, atol=1e-12)
        np.testing.assert_allclose(b @ cov + cov @ b.T, dcov, atol=1e-12)


def test_solve_along_edges_and_paths(x64):
    """The ODE along an edge, or through a third vertex, maps marginal 0 to marginal 2: the
    flow map is affine, so pushing three points gives it, and A S0 A^T = S2, A m0 + b = m2
    (Heun, 60 steps per segment)."""
    f = _fields()
    pts = MEANS[0] + np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    for path in (np.eye(3)[[0, 2]], np.eye(3)[[0, 1, 2]]):
        out = dd.solve_multimarginal(f, pts, path, num_steps=60)
        a, b = _affine_map(pts, np.asarray(out))
        np.testing.assert_allclose(a @ COVS[0] @ a.T, COVS[2], atol=2e-3)
        np.testing.assert_allclose(a @ MEANS[0] + b, MEANS[2], atol=2e-3)
    sols = dd.solve_multimarginal(f, pts, np.eye(3)[[0, 1, 2]], num_steps=5, full_output=True)
    assert isinstance(sols, list) and len(sols) == 2 and sols[0].num_field_evals == 10


def test_exact_fields_minimise_the_loss(x64):
    """The loss is a regression: the exact velocities score lower than a perturbed field."""
    it = dd.MultimarginalInterpolant(3)
    f = dd.MultimarginalGaussianFields(it, MEANS, COVS)
    keys = jax.random.split(jax.random.key(2), 3)
    batch = tuple(
        jax.random.multivariate_normal(k, MEANS[i], COVS[i], (2000,)) for i, k in enumerate(keys)
    )
    loss = dd.MultimarginalLoss(it)

    def shifted(alpha, x):
        return f.velocities(alpha, x) + 0.1

    key = jax.random.key(3)
    assert float(loss(f, batch, key=key)) < float(loss(shifted, batch, key=key))


def test_bad_input():
    it = dd.MultimarginalInterpolant(3)
    with pytest.raises(ValueError, match="num_marginals"):
        dd.MultimarginalInterpolant(1)
    with pytest.raises(ValueError, match="gamma_scale"):
        dd.MultimarginalInterpolant(3, gamma_scale=-1.0)
    with pytest.raises(ValueError, match="covs"):
        dd.MultimarginalGaussianFields(it, MEANS, COVS[:2])
    with pytest.raises(ValueError, match="positive definite"):
        dd.MultimarginalGaussianFields(it, MEANS, -COVS)
    f = dd.MultimarginalGaussianFields(it, MEANS, COVS)
    with pytest.raises(ValueError, match="simplex"):
        f.marginal(jnp.array([0.5, 0.7, 0.1]))
    with pytest.raises(ValueError, match="path"):
        dd.solve_multimarginal(f, jnp.zeros((4, 2)), np.eye(3)[:1], num_steps=4)
    with pytest.raises(ValueError, match="path"):
        dd.solve_multimarginal(f, jnp.zeros((4, 2)), [[0.5, 0.7, 0.1], [1, 0, 0]], num_steps=4)
    with pytest.raises(TypeError, match="solver"):
        dd.solve_multimarginal(f, jnp.zeros((4, 2)), np.eye(3), num_steps=4, solver=dd.DDIM())
    net = f  # any (alpha, x) -> (K, d) model: the errors come before training
    with pytest.raises(ValueError, match="marginals"):
        dd.fit_multimarginal(
            net, it, [jnp.zeros((5, 2))] * 2, key=jax.random.key(0),
            optimizer=optax.adam(1e-3), num_steps=2,
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"marginals\[2\]"):
        dd.fit_multimarginal(
            net, it, [jnp.zeros((5, 2)), jnp.zeros((5, 2)), jnp.zeros((5, 3))],
            key=jax.random.key(0), optimizer=optax.adam(1e-3), num_steps=2,
        )  # fmt: skip


# ------------------------------------------------------------------------------ trained


@pytest.fixture(scope="module")
def trained():
    it = dd.MultimarginalInterpolant(3)
    keys = jax.random.split(jax.random.key(4), 3)
    sets = [
        jax.random.multivariate_normal(k, MEANS[i], COVS[i], (4000,)) for i, k in enumerate(keys)
    ]
    net = dd.MultimarginalMLP(2, 3, key=jax.random.key(5), hidden=64, depth=3)
    # 750 Adam steps (was 1500): the trained test's tolerances are unchanged and still met
    opt = optax.adam(optax.cosine_decay_schedule(3e-3, 750))
    net, losses = dd.fit_multimarginal(
        net, it, sets, key=jax.random.key(6), optimizer=opt, num_steps=750, batch_size=256
    )
    return it, net, losses, sets


@pytest.mark.slow
def test_trained_velocity_transports_between_three_marginals(trained):
    """A trained MultimarginalMLP moves samples of marginal 0 to marginals 1 and 2 (edges) with
    the right first two moments, and its velocity is close to the exact one."""
    it, net, losses, sets = trained
    assert np.all(np.isfinite(np.asarray(losses)))
    f = dd.MultimarginalGaussianFields(it, MEANS, COVS)
    x0 = sets[0][:2000]
    for k in (1, 2):
        out = np.asarray(dd.solve_multimarginal(net, x0, np.eye(3)[[0, k]], num_steps=20))
        # MCSE of a mean of 2000 unit-variance draws is 0.022; the fit error dominates
        np.testing.assert_allclose(out.mean(0), MEANS[k], atol=0.15)
        np.testing.assert_allclose(np.cov(out.T), COVS[k], atol=0.2)
    alpha = jnp.array([0.4, 0.3, 0.3])
    xs = f.marginal(alpha)[0] + jnp.array([[0.0, 0.0], [0.5, -0.5], [-0.5, 0.5]])
    exact = jax.vmap(lambda x: (jnp.eye(3)[1] - jnp.eye(3)[0]) @ f.velocities(alpha, x))(xs)
    got = jax.vmap(lambda x: (jnp.eye(3)[1] - jnp.eye(3)[0]) @ net(alpha, x))(xs)
    assert float(jnp.linalg.norm(got - exact) / jnp.linalg.norm(exact)) < 0.1


def test_loss_compiles_once():
    """The compiled loss does not retrace for a second batch of the same shapes."""
    it = dd.MultimarginalInterpolant(3)
    net = dd.MultimarginalGaussianFields(it, MEANS, COVS)
    loss = eqx.debug.assert_max_traces(
        lambda m, b, k: dd.MultimarginalLoss(it)(m, b, key=k), max_traces=1
    )
    step = eqx.filter_jit(loss)
    for s in range(2):
        batch = tuple(jax.random.normal(jax.random.key(s + i), (8, 2)) for i in range(3))
        assert np.isfinite(float(step(net, batch, jax.random.key(s))))


# ---------------------------------------------------------------------- kinetic optimal


@pytest.mark.parametrize("scale", [0.0, 0.3, 1.0, 2.0])
def test_kinetic_optimal_path_has_least_energy(x64, scale):
    """On data N(m, s^2 I) the kinetic-optimal path's energy is |m|^2 + d (1 - s)^2 (the
    Cauchy–Schwarz bound) and no other path (linear, trigonometric, KO for another s, and the
    KO path with sigma perturbed) does better."""
    m, d = jnp.array([1.0, -0.5, 0.3]), 3
    cov = scale**2 * jnp.eye(d)
    ko = dd.KineticOptimalPath(data_scale=scale, t_data=0.0)
    ke = float(dd.gaussian_kinetic_energy(ko, m, cov))
    np.testing.assert_allclose(ke, float(m @ m) + d * (1 - scale) ** 2, rtol=1e-12)
    others = [
        *([dd.LinearInterpolant(t_data=0.0)] if scale > 0 else []),
        dd.TrigonometricInterpolant(t_data=0.0),
        dd.KineticOptimalPath(data_scale=scale + 0.5, t_data=0.0),
        _Bumped(data_scale=scale, t_data=0.0),
    ]
    for p in others:
        assert float(dd.gaussian_kinetic_energy(p, m, cov, num_points=128)) > ke + 1e-6
    if scale == 0.0:  # the conditional-OT path is kinetic optimal for a point mass
        lin = dd.gaussian_kinetic_energy(dd.LinearInterpolant(t_data=0.0), m, cov)
        np.testing.assert_allclose(float(lin), ke, rtol=1e-12)


class _Bumped(dd.KineticOptimalPath):
    """The KO path with sigma multiplied by 1 + 0.2 t (1 - t) (same ends)."""

    def sigma(self, t):
        return super().sigma(t) * (1 + 0.2 * t * (1 - t))


def test_kinetic_optimal_path_values_and_errors(x64):
    p = dd.KineticOptimalPath(data_scale=0.5)
    t = jnp.linspace(0.05, 1.0, 7)
    np.testing.assert_allclose(p.alpha(t), 1 - t)
    rho = jnp.sqrt(p.alpha(t) ** 2 * 0.25 + p.sigma(t) ** 2)
    np.testing.assert_allclose(rho, 0.5 * (1 - t) + t, atol=1e-14)  # linear in t
    np.testing.assert_allclose(p.sigma(1.0), 1.0)
    with pytest.raises(ValueError, match="data_scale"):
        dd.KineticOptimalPath(data_scale=-1.0)
    with pytest.raises(ValueError, match="cov"):
        dd.gaussian_kinetic_energy(p, jnp.zeros(2), -jnp.eye(2))
    with pytest.raises(TypeError, match="path"):
        dd.gaussian_kinetic_energy("linear", jnp.zeros(2), jnp.eye(2))  # type: ignore[arg-type]


def _rotated_cov(lam):
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(11), (3, 3)))
    return (q * lam) @ q.T


class _BumpedAniso(dd.AnisotropicKineticOptimalPath):
    """The anisotropic KO path with Sigma_t multiplied by 1 + 0.2 t (1 - t) (same ends)."""

    def sigma_matrix(self, t):
        return super().sigma_matrix(t) * (1 + 0.2 * t * (1 - t))


def test_anisotropic_kinetic_optimal_path_meets_the_bound(x64):
    """On N(m, S) with eigenvalues 0.04, 1, 4 (rotated) the anisotropic path's energy, computed
    by the general matrix formula, equals |m|^2 + sum (1 - sqrt(lam))^2 and is below the
    linear, trigonometric and every isotropic KO path's, and below a perturbed one."""
    lam = jnp.array([0.04, 1.0, 4.0])
    m, cov = jnp.array([1.0, -0.5, 0.3]), _rotated_cov(lam)
    path = dd.AnisotropicKineticOptimalPath(cov)
    ke = float(dd.gaussian_kinetic_energy(path, m, cov))
    np.testing.assert_allclose(ke, float(m @ m + jnp.sum((1 - jnp.sqrt(lam)) ** 2)), rtol=1e-10)
    others = [
        dd.LinearInterpolant(t_data=0.0),
        dd.TrigonometricInterpolant(t_data=0.0),
        *[dd.KineticOptimalPath(data_scale=s, t_data=0.0) for s in (0.2, 0.7, 1.0, 1.5, 2.0)],
        _BumpedAniso(cov),
    ]
    for p in others:
        assert float(dd.gaussian_kinetic_energy(p, m, cov, num_points=128)) > ke + 1e-3


def test_anisotropic_path_velocity_transports_its_marginal(x64):
    """The closed-form velocity's mean and covariance flux match d/dt of the marginal
    (jax.jacfwd): E[u] = d mean/dt, A C + C A^T = d cov/dt for u = b + A x."""
    m, cov = jnp.array([1.0, -0.5, 0.3]), _rotated_cov(jnp.array([0.04, 1.0, 4.0]))
    path = dd.AnisotropicKineticOptimalPath(cov)
    for t in (0.1, 0.5, 0.9):
        mu, c = path.marginal(t, m)
        dmu, dc = jax.jacfwd(lambda tt: path.marginal(tt, m))(jnp.asarray(t))
        amat = jax.jacfwd(lambda x, t=t: path.velocity(t, x, m))(mu)
        np.testing.assert_allclose(path.velocity(t, mu, m), dmu, atol=1e-12)
        np.testing.assert_allclose(amat @ c + c @ amat.T, dc, atol=1e-10)


def test_anisotropic_path_reduces_to_isotropic(x64):
    """For S = s^2 I it is KineticOptimalPath(s): same noise scale, same energy; bad input."""
    m, s = jnp.array([1.0, -0.5, 0.3]), 0.5
    iso = dd.KineticOptimalPath(data_scale=s, t_data=0.0)
    path = dd.AnisotropicKineticOptimalPath(s**2 * jnp.eye(3))
    for t in (0.0, 0.3, 1.0):
        np.testing.assert_allclose(path.sigma_matrix(t), iso.sigma(t) * jnp.eye(3), atol=1e-14)
    np.testing.assert_allclose(
        float(dd.gaussian_kinetic_energy(path, m, s**2 * jnp.eye(3))),
        float(dd.gaussian_kinetic_energy(iso, m, s**2 * jnp.eye(3))),
        rtol=1e-10,
    )
    x = path.sample(0.4, m, jnp.ones(3))
    np.testing.assert_allclose(x, 0.6 * m + iso.sigma(0.4) * jnp.ones(3), atol=1e-14)
    with pytest.raises(ValueError, match="cov"):
        dd.AnisotropicKineticOptimalPath(jnp.ones(3))
    with pytest.raises(ValueError, match="cov"):
        dd.AnisotropicKineticOptimalPath(-jnp.eye(2))
    with pytest.raises(ValueError, match="t_data"):
        dd.AnisotropicKineticOptimalPath(jnp.eye(2), t_data=1.0)
