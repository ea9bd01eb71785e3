"""Gaussians, mixtures and the exact noised-mixture fields."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

import driftax.energies as de
from tests.helpers import assert_iid_mean, assert_iid_probability, assert_iid_variance

N = 40_000


@pytest.mark.parametrize(
    "cov",
    [
        None,
        0.5,
        np.array([0.5, 2.0, 1.0]),
        np.array([[2.0, 0.3, 0.1], [0.3, 1.0, 0.2], [0.1, 0.2, 0.5]]),
    ],
)
def test_gaussian_log_density_and_samples(x64, cov):
    mean = np.array([1.0, -1.0, 0.5])
    target = de.gaussian(mean, cov)
    dense = (
        np.eye(3)
        if cov is None
        else (np.diag(np.broadcast_to(cov, 3)) if np.ndim(cov) < 2 else cov)
    )
    x = np.array([0.2, 0.1, -0.3])
    np.testing.assert_allclose(
        target.log_density(jnp.asarray(x)),
        stats.multivariate_normal(mean, dense).logpdf(x),
        rtol=1e-12,
    )
    np.testing.assert_allclose(target.covariance, dense, rtol=1e-12)
    np.testing.assert_allclose(target.variance, np.diag(dense), rtol=1e-12)
    xs = target.sample(jax.random.key(1), N)
    assert_iid_mean(xs, target.mean)
    assert_iid_variance(xs, target.variance)


def test_ill_conditioned_gaussian(x64):
    target = de.ill_conditioned_gaussian(10, 1e5)
    np.testing.assert_allclose(np.asarray(target.variance)[[0, -1]], [1e-5, 1.0])
    rot = de.ill_conditioned_gaussian(6, 100.0, rotate=True)
    np.testing.assert_allclose(np.linalg.eigvalsh(rot.covariance), np.logspace(-2, 0, 6), rtol=1e-9)


def test_gaussian_log_normalizer_by_quadrature(x64):
    target = de.gaussian(jnp.array([0.5, -0.5]), jnp.array([[1.0, 0.4], [0.4, 0.8]]))
    f = jax.jit(lambda a, b: jnp.exp(target.log_density(jnp.stack([a, b]))))
    z, _ = integrate.dblquad(lambda b, a: float(f(a, b)), -10, 10, -10, 10, epsabs=1e-11)
    np.testing.assert_allclose(np.log(z), target.log_normalizer, atol=1e-8)


def test_mixture_matches_scipy_and_moments(x64):
    w = np.array([0.2, 0.5, 0.3])
    means = np.array([[0.0, 0.0], [3.0, 1.0], [-2.0, 2.0]])
    covs = np.array(
        [[[1.0, 0.3], [0.3, 0.5]], [[0.4, 0.0], [0.0, 0.4]], [[2.0, -0.5], [-0.5, 1.0]]]
    )
    mix = de.gaussian_mixture(w, means, covs)
    x = np.array([0.7, 0.2])
    ref = np.log(
        sum(wk * stats.multivariate_normal(m, c).pdf(x) for wk, m, c in zip(w, means, covs))
    )
    np.testing.assert_allclose(mix.log_density(jnp.asarray(x)), ref, rtol=1e-12)
    xs = mix.sample(jax.random.key(2), N)
    assert_iid_mean(xs, mix.mean)
    assert_iid_variance(xs, mix.variance)
    comps = jax.vmap(mix.assign)(xs)
    for k in range(3):
        assert_iid_probability(np.asarray(comps) == k, w[k], n_sigma=6)
    # The mixture density integrates to one.
    f = jax.jit(lambda a, b: jnp.exp(mix.log_density(jnp.stack([a, b]))))
    z, _ = integrate.dblquad(lambda b, a: float(f(a, b)), -15, 15, -15, 15, epsabs=1e-10)
    np.testing.assert_allclose(z, 1.0, atol=1e-7)


def test_mixture_sample_weights(x64):
    mix = de.gaussian_mixture(np.array([0.1, 0.9]), np.array([[-20.0], [20.0]]))
    xs = mix.sample(jax.random.key(3), N)
    assert_iid_probability(np.asarray(xs[:, 0] > 0), 0.9)


@pytest.mark.parametrize("name", ["gmm25", "gmm9", "gmm40", "four_mode_gmm"])
def test_named_mixtures(name, x64):
    target = {
        "gmm25": de.gmm25,
        "gmm9": de.gmm9,
        "gmm40": de.gmm40,
        "four_mode_gmm": lambda: de.four_mode_gmm(16),
    }[name]()
    k = target.num_components
    assert k == {"gmm25": 25, "gmm9": 9, "gmm40": 40, "four_mode_gmm": 4}[name]
    np.testing.assert_allclose(target.weights, np.full(k, 1.0 / k))
    xs = target.sample(jax.random.key(4), N)
    assert_iid_mean(xs, target.mean)
    assert_iid_variance(xs, target.variance)
    counts = np.bincount(np.asarray(jax.vmap(target.assign)(xs)), minlength=k)
    for c in counts:
        assert_iid_probability(np.r_[np.ones(c), np.zeros(N - c)], 1.0 / k)


def test_named_mixture_definitions():
    g25 = de.gmm25()
    assert set(np.unique(np.asarray(g25.means))) == {-10.0, -5.0, 0.0, 5.0, 10.0}
    np.testing.assert_allclose(g25.scale_diag**2, 0.3, rtol=1e-6)
    g40 = de.gmm40()
    assert np.all(np.abs(np.asarray(g40.means)) <= 40)
    np.testing.assert_allclose(de.gmm40(scale=de.GMM40_FAB_SCALE).scale_diag, 0.7443967, rtol=1e-6)
    assert de.gmm40(5).event_shape == (5,)
    f = de.four_mode_gmm(16)
    a = 0.591 * np.sqrt(2 * np.log(16))
    np.testing.assert_allclose(np.abs(np.asarray(f.means)), a, rtol=1e-6)


class _TrigPath:
    def alpha(self, t):
        return jnp.cos(0.5 * jnp.pi * t)

    def sigma(self, t):
        return jnp.sin(0.5 * jnp.pi * t)


class _VEPath:
    def alpha(self, t):
        return jnp.ones_like(t)

    def sigma(self, t):
        return 0.1 + 3.0 * t


@pytest.fixture(scope="module")
def mixtures():
    with jax.enable_x64(True):
        return _build_mixtures()


def _build_mixtures():
    full = de.gaussian_mixture(
        np.array([0.3, 0.7]),
        np.array([[1.0, -1.0], [-2.0, 0.5]]),
        np.array([[[1.0, 0.4], [0.4, 0.6]], [[0.3, -0.1], [-0.1, 0.8]]]),
    )
    return {"diag": de.gmm9(), "full": full}


@pytest.mark.parametrize("kind", ["diag", "full"])
@pytest.mark.parametrize("path", [_TrigPath(), _VEPath()], ids=["trig", "ve"])
def test_noised_fields_against_autodiff(x64, mixtures, kind, path):
    field = de.NoisedGaussianMixture(mixtures[kind], path)

    @jax.jit
    def residuals(t, x):
        logp = lambda y: field.log_density(t, y)
        score = jax.grad(logp)(x)
        a, s = path.alpha(t), path.sigma(t)
        # Tweedie: E[x_data | x_t] = (x + sigma² score) / alpha; E[eps | x_t] = -sigma score.
        r_score = field.score(t, x) - score
        r_denoise = field.denoise(t, x) - (x + s**2 * score) / a
        r_noise = field.noise(t, x) + s * score
        # The velocity transports the density: d/dt log p_t + div v + v · score = 0.
        dlogp_dt = jax.grad(lambda tt: field.log_density(tt, x))(t)
        div = jnp.trace(jax.jacfwd(lambda y: field.velocity(t, y))(x))
        r_continuity = dlogp_dt + div + field.velocity(t, x) @ score
        return r_score, r_denoise, r_noise, r_continuity

    for t in (0.05, 0.4, 0.9):
        t = jnp.asarray(t)
        for x in field.sample(jax.random.key(5), t, 3):
            for r in residuals(t, x):
                np.testing.assert_allclose(r, 0.0, atol=1e-8)


def test_noised_log_density_integrates_to_one(x64, mixtures):
    field = de.NoisedGaussianMixture(mixtures["full"], _TrigPath())
    f = jax.jit(lambda a, b: jnp.exp(field.log_density(0.6, jnp.stack([a, b]))))
    z, _ = integrate.dblquad(lambda b, a: float(f(a, b)), -12, 12, -12, 12, epsabs=1e-10)
    np.testing.assert_allclose(z, 1.0, atol=1e-7)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: de.gaussian(np.zeros((2, 2))), "`mean`"),
        (lambda: de.gaussian(np.array([0.0, np.nan])), "`mean` must be finite"),
        (lambda: de.gaussian(np.zeros(2), np.array([1.0, -1.0])), "`covariance` must be positive"),
        (lambda: de.gaussian(np.zeros(2), np.array([[1.0, 2.0], [2.0, 1.0]])), "positive definite"),
        (lambda: de.gaussian(np.zeros(2), np.ones(3)), "`covariance`"),
        (lambda: de.ill_conditioned_gaussian(10, 0.5), "`kappa`"),
        (lambda: de.ill_conditioned_gaussian(0, 10.0), "`d`"),
        (lambda: de.gaussian_mixture(np.ones(2), np.zeros((3, 2))), "`weights`"),
        (lambda: de.gaussian_mixture(np.array([1.0, -1.0]), np.zeros((2, 2))), "`weights`"),
        (
            lambda: de.gaussian_mixture(np.ones(2), np.zeros((2, 2)), np.ones((2, 3))),
            "`covariances`",
        ),
        (lambda: de.gmm40(scale=0.0), "`scale`"),
        (lambda: de.four_mode_gmm(7), "`d`"),
    ],
)
def test_bad_input(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_sample_shape_errors():
    with pytest.raises(ValueError, match="`shape`"):
        de.gmm9().sample(jax.random.key(0), (-1,))
