"""Closed-form diffusion: the exact empirical field memorizes, its score is the gradient of the
noised empirical log density, the nearest-neighbour estimator, smoothing, the Gaussian-score
approximation and teleportation against a numerical solve, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax.diffusion as dd


@pytest.fixture(scope="module")
def data():
    return jax.random.normal(jax.random.key(0), (24, 2)) * jnp.array([2.0, 0.5])


def test_exact_score_is_gradient_of_noised_log_density(data, x64):
    """The score of `N^-1 sum_i N(alpha y_i, sigma^2 I)` by `jax.grad`, at several times."""
    data = data.astype(jnp.float64)
    path = dd.VP()
    field = dd.ClosedFormDiffusion(data, path)
    x = jnp.array([0.3, -0.8])
    for t in (0.9, 0.3, 0.05):
        a, s = path.alpha(t), path.sigma(t)

        def logp(z, a=a, s=s):
            return jax.scipy.special.logsumexp(-jnp.sum((z - a * data) ** 2, -1) / (2 * s**2))

        np.testing.assert_allclose(field.score(t, x), jax.grad(logp)(x), rtol=1e-10)
        # the nearest-neighbour estimator with every point is the same field
        full = dd.ClosedFormDiffusion(data, path, num_neighbors=data.shape[0])
        np.testing.assert_allclose(full.denoise(t, x), field.denoise(t, x), rtol=1e-12)


def test_zero_smoothing_memorizes(data):
    """sigma = 0: every sample lands on a training point: its denoised value IS a training point
    (the posterior over training points is one-hot) and it sits at alpha(t_data) y_i up to the
    residual noise sigma(t_data) eps (|eps| of a few units)."""
    path = dd.VP()
    field = dd.ClosedFormDiffusion(data, path)
    x0 = path.prior_sample(jax.random.key(1), (64, 2))
    x = dd.solve(dd.DDIM(), field.denoise, path, x0, num_steps=60, parameterization="data")
    a, s = path.alpha(path.t_data), path.sigma(path.t_data)
    d = jnp.linalg.norm(x[:, None] - a * data[None], axis=-1)
    assert float(jnp.max(jnp.min(d, axis=1))) < 10 * float(s)
    den = jax.vmap(lambda z: field.denoise(path.t_data, z))(x)
    dd_ = jnp.min(jnp.linalg.norm(den[:, None] - data[None], axis=-1), axis=1)
    assert float(jnp.max(dd_)) < 1e-5
    # several distinct training points are reached (not a collapse onto one)
    assert len(np.unique(np.asarray(jnp.argmin(d, axis=1)))) >= 8


def test_smoothing_gives_new_samples_near_the_data(data):
    """sigma > 0 (half the median nearest-neighbour spacing): most samples are away from every
    training point, yet within the data's range; the nearest-neighbour estimator (k = 8) gives
    nearly the same samples; the same key gives the same field."""
    path = dd.VP()
    d_train = jnp.linalg.norm(data[:, None] - data[None], axis=-1) + jnp.eye(data.shape[0]) * 1e9
    spacing = float(jnp.median(jnp.min(d_train, axis=1)))
    kw = dict(smoothing=0.5 * spacing, key=jax.random.key(2))
    field = dd.ClosedFormDiffusion(data, path, **kw)
    knn = dd.ClosedFormDiffusion(data, path, num_neighbors=8, **kw)
    x0 = path.prior_sample(jax.random.key(3), (128, 2))
    run = lambda f: dd.solve(dd.DDIM(), f.denoise, path, x0, num_steps=60, parameterization="data")  # noqa: E731
    for f in (field, knn):
        x = run(f)
        d = jnp.min(jnp.linalg.norm(x[:, None] - data[None], axis=-1), axis=1)
        assert float(jnp.mean(d > 0.05 * spacing)) >= 0.5
        assert float(jnp.max(d)) < 2.0 * spacing
    near = data[:16] + 0.1 * spacing
    gap = jax.vmap(lambda z: knn.denoise(0.05, z) - field.denoise(0.05, z))(near)
    assert float(jnp.max(jnp.abs(gap))) < 1e-4
    again = dd.ClosedFormDiffusion(data, path, **kw)
    np.testing.assert_array_equal(again.perturbations, field.perturbations)


def test_gaussian_teleport_is_the_flow_of_the_gaussian_approximation(data, x64):
    """The closed-form jump equals a tight numerical solve of the Gaussian approximation's
    probability-flow ODE, composes (t0 -> t1 -> t2 = t0 -> t2), and is the identity at t_from."""
    data = data.astype(jnp.float64)
    path = dd.VP()
    gauss = dd.gaussian_approximation(data, path)
    mean, cov = jnp.mean(data, 0), jnp.cov(data, rowvar=False)
    np.testing.assert_allclose(gauss.mixture.means[0], mean, rtol=1e-12)
    x0 = path.prior_sample(jax.random.key(4), (16, 2)).astype(jnp.float64)
    t_mid = 0.4
    ts = jnp.linspace(path.t_noise, t_mid, 201)
    num = dd.solve(dd.DPMSolverPP3M(), gauss.score, path, x0, ts=ts)
    # gaussian_approximation adds a jitter of 1e-6 times the mean variance to cov
    cov_j = cov + 1e-6 * jnp.mean(jnp.diag(cov)) * jnp.eye(2)
    jump = dd.gaussian_teleport(x0, path, mean, cov_j, t_mid)
    np.testing.assert_allclose(jump, num, atol=1e-7)
    two = dd.gaussian_teleport(
        dd.gaussian_teleport(x0, path, mean, cov, 0.7), path, mean, cov, 0.2, t_from=0.7
    )
    np.testing.assert_allclose(two, dd.gaussian_teleport(x0, path, mean, cov, 0.2), rtol=1e-12)
    np.testing.assert_allclose(dd.gaussian_teleport(x0, path, mean, cov, path.t_noise), x0)


def test_bad_input(data):
    path = dd.VP()
    with pytest.raises(ValueError, match="data"):
        dd.ClosedFormDiffusion(data[0], path)
    with pytest.raises(ValueError, match="smoothing"):
        dd.ClosedFormDiffusion(data, path, smoothing=-1.0)
    with pytest.raises(ValueError, match="key"):
        dd.ClosedFormDiffusion(data, path, smoothing=0.1)
    with pytest.raises(ValueError, match="num_neighbors"):
        dd.ClosedFormDiffusion(data, path, num_neighbors=100)
    with pytest.raises(TypeError, match="path"):
        dd.ClosedFormDiffusion(data, "VP")
    with pytest.raises(ValueError, match="cov"):
        dd.gaussian_teleport(jnp.zeros((3, 2)), path, jnp.zeros(2), jnp.eye(3), 0.5)
    with pytest.raises(ValueError, match="t_to"):
        dd.gaussian_teleport(jnp.zeros((3, 2)), path, jnp.zeros(2), jnp.eye(2), 2.0)
