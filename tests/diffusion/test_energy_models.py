"""Energy-parameterized diffusion models and MCMC correctors with an exact Metropolis test:
invariance of the exact noised marginal (MCSE), the energy/score identities, a trained model."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import driftax.diffusion as dd
import driftax.energies as de
import driftax.samplers as ds

from .helpers import small_mixture


def _corrected(corrector, model, t, x, key):
    keys = jax.random.split(key, x.shape[0])
    return jax.jit(jax.vmap(lambda xi, k: corrector.correct(model, t, xi, key=k)))(x, keys)


@pytest.mark.parametrize(
    "kernel", [ds.MALA(step_size=0.3), ds.HMC(step_size=0.3, num_integration_steps=3)]
)
def test_sampler_corrector_leaves_exact_marginal_invariant(kernel):
    path = dd.VP()
    field = de.NoisedGaussianMixture(small_mixture(), path)
    model = dd.ParameterizedField(field=field.score, path=path, parameterization="score")
    corrector = dd.SamplerCorrector(kernel, field.at, num_steps=10)
    t, n = 0.3, 4000
    x = field.sample(jax.random.key(0), t, n)
    y = np.asarray(_corrected(corrector, model, t, x, jax.random.key(1)))
    assert np.all(np.isfinite(y))
    assert np.mean(np.any(y != np.asarray(x), axis=1)) > 0.5  # the kernel moves
    exact = field.sample(jax.random.key(2), t, 200_000)
    m, v = np.asarray(exact.mean(0)), np.asarray(exact.var(0))
    # iid chains started at exact draws stay exact: moments within 5 MCSE of the truth
    np.testing.assert_array_less(np.abs(y.mean(0) - m), 5 * np.sqrt(v / n))
    fourth = np.asarray(((exact - m) ** 4).mean(0))
    np.testing.assert_array_less(np.abs(y.var(0) - v), 5 * np.sqrt((fourth - v**2) / n))


def test_mala_corrector_pulls_a_wrong_start_to_the_marginal():
    # from draws of another time, the corrected points move to the marginal at t
    path = dd.VP()
    field = de.NoisedGaussianMixture(small_mixture(), path)
    model = dd.ParameterizedField(field=field.score, path=path, parameterization="score")
    t, n = 0.3, 4000
    start = field.sample(jax.random.key(0), 0.6, n)
    corrector = dd.SamplerCorrector(ds.MALA(step_size=0.3), field.at, num_steps=60)
    y = np.asarray(_corrected(corrector, model, t, start, jax.random.key(1)))
    exact = np.asarray(field.sample(jax.random.key(2), t, 200_000))
    m, v = exact.mean(0), exact.var(0)
    assert np.all(np.abs(y.mean(0) - m) < np.abs(np.asarray(start).mean(0) - m) / 3 + 5e-2)
    np.testing.assert_array_less(np.abs(y.var(0) - v), 0.15 * v)


def test_energy_model_identities():
    path = dd.EDM()
    net = dd.MLP(2, key=jax.random.key(0), hidden=16, depth=2)
    # perturb the last layer so the network is not (nearly) zero
    net = jax.tree.map(lambda a: a + 0.3 if jnp.shape(a) == (2,) else a, net)
    model = dd.EnergyModel(net, path, event_shape=2)
    assert model.path == path and model.parameterization == "score"
    t, x = 1.3, jnp.array([0.4, -0.7])
    np.testing.assert_allclose(
        model(t, x), -jax.grad(lambda y: model.energy(t, y))(x), rtol=1e-5, atol=1e-6
    )
    e, s = model.energy_and_score(t, x)
    np.testing.assert_allclose(s, model(t, x), rtol=1e-6)
    energy = model.at(t)
    assert isinstance(energy, de.AbstractEnergy) and energy.event_shape == (2,)
    lp, sc = energy.value_and_score(x)
    np.testing.assert_allclose(lp, -e, rtol=1e-6)
    np.testing.assert_allclose(sc, jax.grad(energy.log_density)(x), rtol=1e-5, atol=1e-6)
    # the field is conservative: its Jacobian is symmetric
    jac = jax.jacobian(lambda y: model(t, y))(x)
    np.testing.assert_allclose(jac, jac.T, rtol=1e-4, atol=1e-6)
    # with a zero network the model is the exact score of N(0, sigma_data^2) noised to t, on
    # the VP path as on EDM, and its energy is that Gaussian's up to a constant
    for p in (path, dd.VP()):
        zero = dd.EnergyModel(lambda c, z: jnp.zeros(()), p, event_shape=2, sigma_data=0.7)
        tt = 1.3 if p is path else 0.4
        var = p.sigma(tt) ** 2 + p.alpha(tt) ** 2 * 0.49
        np.testing.assert_allclose(zero(tt, x), -x / var, rtol=1e-5)
    with pytest.raises(ValueError, match="sigma_data"):
        dd.EnergyModel(net, path, event_shape=2, sigma_data=0.0)
    with pytest.raises(TypeError, match="path"):
        dd.EnergyModel(net, None, event_shape=2)  # pyright: ignore[reportArgumentType]


@pytest.mark.slow
def test_trained_energy_model_with_mala_corrector():
    path = dd.EDM()
    mix = small_mixture()
    data = mix.sample(jax.random.key(0), 4096)
    net = dd.MLP(2, key=jax.random.key(1), hidden=64, depth=3)
    model = dd.EnergyModel(net, path, event_shape=2, sigma_data=1.5)
    model, losses = dd.fit(
        model,
        dd.DenoisingLoss(path, sigma_data=1.5),
        data,
        key=jax.random.key(2),
        optimizer=optax.adam(2e-3),
        num_steps=1500,
        batch_size=256,
    )
    assert np.all(np.isfinite(np.asarray(losses)))
    # the exact Metropolis test on the trained energy accepts most small moves
    t = 0.5
    x = de.NoisedGaussianMixture(mix, path).sample(jax.random.key(3), t, 1000)
    kernel = ds.MALA(step_size=0.1)
    energy = model.at(t)
    states = jax.vmap(lambda xi: kernel.init(energy, xi))(x)
    keys = jax.random.split(jax.random.key(4), x.shape[0])
    _, info = jax.vmap(lambda s, k: kernel.step(energy, s, key=k))(states, keys)
    acc = float(jnp.mean(info.acceptance_rate))
    assert 0.5 < acc <= 1.0
    # corrected sampling on the trained model: finite, and closer to the data than without
    x0 = path.prior_sample(jax.random.key(5), (2000, 2))
    plain = dd.solve(dd.EulerMaruyama(), model, path, x0, num_steps=40, key=jax.random.key(6))
    pc = dd.PredictorCorrector(
        dd.EulerMaruyama(), dd.SamplerCorrector(ds.MALA(step_size=0.2), model.at, num_steps=2)
    )
    corrected = dd.solve(pc, model, path, x0, num_steps=40, key=jax.random.key(6))
    ref = mix.sample(jax.random.key(7), 2000)
    d_plain = float(de.energy_distance(plain, ref))
    d_pc = float(de.energy_distance(corrected, ref))
    assert np.isfinite(d_pc) and d_pc < d_plain


def test_fkc_reweights_a_product_of_energy_models():
    # with a zero network an EnergyModel is the exact noised N(0, sigma_data^2 I), so the
    # Feynman–Kac product of two of them must be N(0, v) with 1/v = 1/s1^2 + 1/s2^2
    path = dd.VP()
    s1, s2 = 0.7, 1.6
    zero = lambda c_noise, z: jnp.zeros(())  # noqa: E731
    a = dd.EnergyModel(zero, path, event_shape=2, sigma_data=s1)
    b = dd.EnergyModel(zero, path, event_shape=2, sigma_data=s2)
    x0 = path.prior_sample(jax.random.key(0), (2000, 2))
    res = dd.fkc_sample([a, b], path, x0, key=jax.random.key(1), num_steps=100)
    m, v, ess = dd.weighted_moments(res.x, res.log_weights)
    ess = float(ess)
    var = 1 / (1 / s1**2 + 1 / s2**2)
    assert ess > 300
    np.testing.assert_array_less(np.abs(np.asarray(m)), 5 * np.sqrt(var / ess))
    np.testing.assert_array_less(np.abs(np.asarray(v) - var), 5 * var * np.sqrt(2 / ess))
    log_z = -np.log(2 * np.pi * (s1**2 + s2**2))  # two dimensions of N(0; 0, s1^2 + s2^2)
    assert abs(float(res.log_normalizer) - log_z) < 0.1
