"""The energy interface, compositions and adapters."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer.util import potential_energy

import driftax.energies as de


def test_value_and_score_match_autodiff(x64):
    target = de.gaussian(jnp.array([1.0, -2.0]), jnp.array([[2.0, 0.5], [0.5, 1.0]]))
    x = jnp.array([0.3, 0.7])
    lp, s = target.value_and_score(x)
    cov = np.array([[2.0, 0.5], [0.5, 1.0]])
    np.testing.assert_allclose(s, -np.linalg.solve(cov, np.array(x) - [1.0, -2.0]), rtol=1e-12)
    np.testing.assert_allclose(lp, target.log_density(x))
    np.testing.assert_allclose(target.energy(x), -lp)
    np.testing.assert_allclose(target.score(x), s)
    assert target.dim == 2


def test_log_density_rejects_wrong_shape():
    target = de.gaussian(jnp.zeros(3))
    with pytest.raises(ValueError, match="`x` must have the energy's event shape"):
        target.log_density(jnp.zeros((2, 3)))


def test_energies_jit_and_vmap():
    target = de.gmm9()
    xs = target.sample(jax.random.key(0), 5)
    lp = jax.jit(jax.vmap(target.log_density))(xs)
    assert lp.shape == (5,)
    np.testing.assert_allclose(lp, [target.log_density(x) for x in xs], rtol=1e-5)


def test_tempered_and_geometric_path(x64):
    p0 = de.gaussian(jnp.zeros(2))
    p1 = de.gaussian(jnp.ones(2), 0.5)
    x = jnp.array([0.2, -0.4])
    np.testing.assert_allclose(de.Tempered(p1, 0.3).log_density(x), 0.3 * p1.log_density(x))
    path = de.GeometricPath(p0, p1, 0.0)
    np.testing.assert_allclose(path.log_density(x), p0.log_density(x))
    np.testing.assert_allclose(path.at(1.0).log_density(x), p1.log_density(x))
    mid = path.at(0.25).log_density(x)
    np.testing.assert_allclose(mid, 0.75 * p0.log_density(x) + 0.25 * p1.log_density(x))
    # `at` works under jit with a traced beta.
    f = jax.jit(lambda b: path.at(b).log_density(x))
    np.testing.assert_allclose(f(0.25), mid)


def test_sum_and_conditioned(x64):
    a, b = de.gaussian(jnp.zeros(3)), de.gaussian(jnp.ones(3), 2.0)
    x = jnp.array([0.1, 0.2, 0.3])
    np.testing.assert_allclose(
        de.SumEnergy(a, b).log_density(x), a.log_density(x) + b.log_density(x)
    )
    cond = de.Conditioned(b, index=[1], values=[5.0])
    assert cond.event_shape == (2,)
    np.testing.assert_allclose(
        cond.log_density(jnp.array([0.1, 0.3])), b.log_density(jnp.array([0.1, 5.0, 0.3]))
    )


class _Affine(eqx.Module):
    scale: jax.Array
    shift: jax.Array

    def transform_and_log_det(self, x, condition=None):
        return self.scale * x + self.shift, jnp.sum(jnp.log(jnp.abs(self.scale)))


def test_pullback_is_change_of_variables(x64):
    target = de.gaussian(jnp.array([1.0, 2.0]), jnp.array([4.0, 9.0]))
    bij = _Affine(jnp.array([2.0, 3.0]), jnp.array([1.0, 2.0]))
    pulled = de.PullBack(target, bij)
    z = jnp.array([0.3, -0.8])
    # T pushes N(0, I) to the target exactly, so the pull-back is the standard normal density.
    np.testing.assert_allclose(pulled.log_density(z), de.gaussian(jnp.zeros(2)).log_density(z))
    np.testing.assert_allclose(pulled.push_forward(z), bij.transform_and_log_det(z)[0])


def test_from_log_density_roundtrip():
    fn = lambda x: -0.5 * jnp.sum(x**2)
    energy = de.from_log_density(fn, jnp.zeros((2, 3)))
    assert energy.event_shape == (2, 3)
    x = jnp.ones((2, 3))
    np.testing.assert_allclose(energy.log_density(x), fn(x))
    np.testing.assert_allclose(energy.score(x), -x)
    assert de.to_logdensity_fn(energy)(x) == fn(x)


def test_from_log_density_bad_input():
    with pytest.raises(ValueError, match="`fn` must return a scalar"):
        de.from_log_density(lambda x: x**2, jnp.zeros(3))
    with pytest.raises(TypeError, match="`fn` must be callable"):
        de.from_log_density(3.0, jnp.zeros(3))
    with pytest.raises(TypeError, match="`fn` could not be evaluated"):
        de.from_log_density(lambda x: x @ jnp.ones(5), jnp.zeros(3))


def _eight_schools(sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", sigma.shape[0]):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def test_from_numpyro_matches_numpyro_potential(x64):
    y = jnp.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
    sigma = jnp.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
    energy = de.from_numpyro(_eight_schools, sigma, y=y)
    assert energy.event_shape == (10,)
    x = jax.random.normal(jax.random.key(1), (10,))
    params = energy.unconstrained_sites(x)
    expected = potential_energy(_eight_schools, (sigma,), {"y": y}, params)
    np.testing.assert_allclose(energy.energy(x), expected, rtol=1e-12)
    sites = energy.constrain(x)
    np.testing.assert_allclose(sites["tau"], jnp.exp(params["tau"]), rtol=1e-12)
    np.testing.assert_allclose(sites["mu"], params["mu"])
    assert np.isfinite(energy.log_density(energy.initial_position))


def test_blackjax_export_runs_a_kernel():
    import blackjax

    target = de.gaussian(jnp.zeros(3))
    mala = blackjax.mala(de.to_logdensity_fn(target), 0.5)
    state = mala.init(jnp.ones(3))
    state, info = jax.jit(mala.step)(jax.random.key(0), state)
    assert state.position.shape == (3,)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: de.Tempered(de.gaussian(jnp.zeros(2)), -1.0), "inverse_temperature"),
        (lambda: de.Tempered(3.0, 1.0), "`base` must be a driftax AbstractEnergy"),
        (
            lambda: de.GeometricPath(de.gaussian(jnp.zeros(2)), de.gaussian(jnp.zeros(3))),
            "event shape",
        ),
        (
            lambda: de.GeometricPath(de.gaussian(jnp.zeros(2)), de.gaussian(jnp.zeros(2)), 2.0),
            "`beta`",
        ),
        (lambda: de.SumEnergy(), "`terms`"),
        (lambda: de.Conditioned(de.gaussian(jnp.zeros(2)), [0, 1], [1.0, 1.0]), "free coordinate"),
        (lambda: de.Conditioned(de.gaussian(jnp.zeros(2)), [5], [1.0]), "`index`"),
        (lambda: de.PullBack(de.gaussian(jnp.zeros(2)), object()), "`bijection`"),
    ],
)
def test_composition_bad_input(build, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build()
