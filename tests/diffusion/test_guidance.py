"""Guidance, products of experts and Feynman–Kac corrector sampling (exact Gaussian products)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax.diffusion as dd
import driftax.energies as de

M1, V1 = np.array([-1.0, 0.5]), np.array([0.5, 1.0])
M2, V2 = np.array([1.5, -0.5]), np.array([1.0, 0.3])


def _expert(m, v, path):
    return de.NoisedGaussianMixture(de.gaussian_mixture(np.ones(1), m[None], v[None]), path)


def test_guided_fields():
    path = dd.VP()
    a, b = _expert(M1, V1, path), _expert(M2, V2, path)
    t, x = 0.3, jnp.array([0.2, 0.1])
    cfg = dd.classifier_free_guidance(a.score, b.score, 3.0)
    np.testing.assert_allclose(
        cfg(t, x), b.score(t, x) + 3.0 * (a.score(t, x) - b.score(t, x)), rtol=1e-6
    )
    np.testing.assert_allclose(
        dd.autoguidance(a.score, b.score, 1.0)(t, x), a.score(t, x), rtol=1e-6
    )
    poe = dd.product_of_experts(a.score, b.score, weights=[0.5, 2.0])
    np.testing.assert_allclose(poe(t, x), 0.5 * a.score(t, x) + 2.0 * b.score(t, x), rtol=1e-6)
    # guidance commutes with the parameterization conversions (all are affine in the score)
    g_noise = dd.classifier_free_guidance(a.noise, b.noise, 3.0)
    np.testing.assert_allclose(
        path.convert(g_noise(t, x), t, x, source="noise", target="score"), cfg(t, x), rtol=1e-5
    )
    model = dd.Denoiser(net=dd.MLP(2, key=jax.random.key(0), hidden=8, depth=2), path=path)
    with pytest.raises(ValueError, match="product of experts"):
        dd.product_of_experts(model, a.score)
    other = dd.NetworkField(net=a.score, path=path, parameterization="score")
    with pytest.raises(ValueError, match="parameterization"):
        dd.classifier_free_guidance(model, other, 2.0)


@pytest.fixture(scope="module")
def particles():
    path = dd.VP()
    return path, path.prior_sample(jax.random.key(0), (3000, 2))


def test_fkc_product_of_gaussian_experts(particles):
    path, x0 = particles
    a, b = _expert(M1, V1, path), _expert(M2, V2, path)
    var = 1 / (1 / V1 + 1 / V2)
    mean = var * (M1 / V1 + M2 / V2)
    res = dd.fkc_sample([a.score, b.score], path, x0, key=jax.random.key(1), num_steps=200)
    m, v, ess = dd.weighted_moments(res.x, res.log_weights)
    ess = float(ess)
    assert ess > 500
    np.testing.assert_array_less(np.abs(m - mean), 5 * np.sqrt(var / ess))
    np.testing.assert_array_less(np.abs(v - var), 5 * var * np.sqrt(2 / ess))
    log_z = np.sum(-0.5 * (M1 - M2) ** 2 / (V1 + V2) - 0.5 * np.log(2 * np.pi * (V1 + V2)))
    assert abs(float(res.log_normalizer) - log_z) < 0.1
    # The uncorrected score-sum SDE is visibly biased (variance far too small).
    naive = dd.solve(
        dd.EulerMaruyama(),
        dd.product_of_experts(a.score, b.score),
        path,
        x0 / np.sqrt(2),
        num_steps=200,
        key=jax.random.key(2),
    )
    assert np.all(np.abs(naive.var(0) - var) > 10 * var * np.sqrt(2 / naive.shape[0]))


def test_fkc_annealing(particles):
    path, x0 = particles
    a = _expert(M1, V1, path)
    res = dd.fkc_sample(
        [a.denoise],
        path,
        x0,
        key=jax.random.key(3),
        num_steps=200,
        betas=[2.0],
        parameterization="data",
        resample="multinomial",
        final_resample=True,
    )
    m, v, _ = dd.weighted_moments(res.x, res.log_weights)
    n_eff = x0.shape[0] / 2  # after a final resampling, duplicates: be conservative
    np.testing.assert_array_less(np.abs(m - M1), 5 * np.sqrt(V1 / 2 / n_eff))
    np.testing.assert_array_less(np.abs(v - V1 / 2), 5 * (V1 / 2) * np.sqrt(2 / n_eff))
    assert int(res.num_resampled) >= 1


def test_fkc_bad_input(particles):
    path, x0 = particles
    a = _expert(M1, V1, path)
    with pytest.raises(ValueError, match="betas"):
        dd.fkc_sample([a.score], path, x0, key=jax.random.key(0), num_steps=5, betas=[1.0, 2.0])
    with pytest.raises(ValueError, match="resample"):
        dd.fkc_sample(
            [a.score], path, x0, key=jax.random.key(0), num_steps=5, resample="stratified"
        )
    with pytest.raises(TypeError, match="fields"):
        dd.fkc_sample([], path, x0, key=jax.random.key(0), num_steps=5)


# ----------------------------------------------------------------------------- training-free


def _gauss_field(m, v, path):
    g = _expert(np.asarray(m, float), np.asarray(v, float), path)
    return dd.ParameterizedField(field=g.score, path=path, parameterization="score")


PRIOR_M, PRIOR_V = np.array([0.5, -1.0]), np.array([1.0, 0.5])
Y, TAU2 = np.array([1.5, 0.0]), 0.2


def _gauss_loglik(x0):
    return -0.5 * jnp.sum((Y - x0) ** 2) / TAU2


def test_dps_with_matched_step_samples_the_exact_gaussian_posterior():
    # Gaussian prior and likelihood: ∇ log p(y | x_t) = J (y - x̂) / (tau^2 + c_t) with
    # c_t = Var(x_data | x_t); DPS uses J (y - x̂) / tau^2, so the schedule
    # rho_t = tau^2 / (tau^2 + c_t) makes it exact. With rho = 1 (plain DPS) the guided ODE is
    # still linear and its law follows the moment ODE.
    from .test_conditional import affine_moments

    path = dd.VP()
    model = _gauss_field(PRIOR_M, PRIOR_V, path)

    def rho(t):
        a, s = path.alpha(t), path.sigma(t)
        c = PRIOR_V * s**2 / (a**2 * PRIOR_V + s**2)
        return TAU2 / (TAU2 + c)

    v_post = 1 / (1 / PRIOR_V + 1 / TAU2)
    m_post = v_post * (PRIOR_M / PRIOR_V + Y / TAU2)
    n = 4000
    x0 = path.prior_sample(jax.random.key(0), (n, 2))
    exact = dd.dps(model, _gauss_loglik, scale=rho)
    xs = np.asarray(dd.solve(dd.Heun(), exact, path, x0, num_steps=60))
    np.testing.assert_array_less(np.abs(xs.mean(0) - m_post), 5 * np.sqrt(v_post / n) + 5e-3)
    np.testing.assert_array_less(np.abs(xs.var(0) - v_post), 5 * v_post * np.sqrt(2 / n) + 5e-3)
    plain = dd.dps(model, _gauss_loglik)
    xp = np.asarray(dd.solve(dd.Heun(), plain, path, x0, num_steps=60))
    sig2 = float(path.sigma(path.t_noise)) ** 2
    m, p = affine_moments(plain, path, 0.0, sig2)
    np.testing.assert_array_less(np.abs(xp.mean(0) - m), 5 * np.sqrt(p / n) + 5e-3)
    np.testing.assert_array_less(np.abs(xp.var(0) - p), 5 * p * np.sqrt(2 / n) + 5e-3)
    # plain DPS moves towards the posterior mean from the prior mean
    assert np.all(np.abs(m - m_post) < np.abs(PRIOR_M - m_post))


def test_tfg_terms():
    path = dd.VP()
    model = _gauss_field(PRIOR_M, PRIOR_V, path)
    t, x = 0.4, jnp.array([0.3, -0.2])
    a, s = path.alpha(t), path.sigma(t)
    x_hat = model.denoise(t, x)
    jac = jax.jacobian(lambda y: model.denoise(t, y))(x)
    g = (Y - x_hat) / TAU2
    # variance guidance = the gradient through the denoiser (checked against jax.jacobian)
    dps = dd.TrainingFreeGuidance(model=model, log_likelihood=_gauss_loglik, rho=0.7)
    np.testing.assert_allclose(dps(t, x), model.score(t, x) + 0.7 * jac.T @ g, rtol=1e-5)
    # mean guidance: two gradient steps on x̂, moving the score as shifting x̂ does
    mu = 0.05
    d1 = mu * g
    d2 = d1 + mu * (Y - x_hat - d1) / TAU2
    mean = dd.TrainingFreeGuidance(
        model=model, log_likelihood=_gauss_loglik, rho=0.0, mu=mu, num_iter=2
    )
    np.testing.assert_allclose(mean(t, x), model.score(t, x) + a / s**2 * d2, rtol=1e-5)
    # implicit dynamics: gamma = 0 is the plain predictor; gamma > 0 smooths it (deterministic)
    sm = dd.TrainingFreeGuidance(
        model=model,
        log_likelihood=_gauss_loglik,
        gamma=0.3,
        num_smoothing=64,
        key=jax.random.key(0),
    )
    v1, v2 = sm(t, x), sm(t, x)
    np.testing.assert_array_equal(v1, v2)
    assert np.all(np.isfinite(v1)) and not np.allclose(v1, dps(t, x))
    for bad in [dict(rho=float("nan")), dict(mu=float("inf")), dict(gamma=-1.0)]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            dd.TrainingFreeGuidance(model=model, log_likelihood=_gauss_loglik, **bad)
    with pytest.raises(ValueError, match="num_iter"):
        dd.TrainingFreeGuidance(model=model, log_likelihood=_gauss_loglik, num_iter=-1)
    with pytest.raises(TypeError, match="model"):
        dd.dps(lambda t, y: y, _gauss_loglik)
