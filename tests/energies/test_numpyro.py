"""`from_numpyro`: numpyro's potential, the way to and from sites, dispersed starts, data as
arguments (no recompilation for new data of the same shapes), and clear errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer.util import constrain_fn, potential_energy

import driftax as dx
import driftax.energies as de

Y = jnp.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = jnp.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def schools(sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", sigma.shape[0]):
        theta_raw = numpyro.sample("theta_raw", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_raw)
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def simplex_model(counts):
    p = numpyro.sample("p", dist.Dirichlet(jnp.ones(3)))
    numpyro.sample("counts", dist.Multinomial(total_count=counts.sum(), probs=p), obs=counts)


@pytest.fixture(scope="module")
def energy():
    return de.from_numpyro(schools, SIGMA, y=Y)


def test_layout(energy):
    assert isinstance(energy, de.AbstractInitializable)
    assert energy.event_shape == (10,)
    assert energy.site_names == ("mu", "tau", "theta_raw")
    assert energy.dtype == jnp.zeros(()).dtype


def test_log_density_is_minus_numpyro_potential(x64):
    energy = de.from_numpyro(schools, SIGMA, y=Y)
    assert energy.dtype == jnp.float64
    xs = 2.0 * jax.random.normal(jax.random.key(1), (5, 10))

    @jax.jit
    def both(x):
        numpyro_potential = potential_energy(schools, (SIGMA,), {"y": Y}, energy.unravel(x))
        return energy.log_density(x), numpyro_potential

    ours, theirs = jax.vmap(both)(xs)
    assert ours.shape == (5,) and np.all(np.isfinite(ours))
    np.testing.assert_allclose(ours, -theirs, rtol=1e-12)


def test_ravel_unravel_round_trip(energy):
    x = jax.random.normal(jax.random.key(2), (10,))
    sites = energy.unravel(x)
    assert set(sites) == {"mu", "tau", "theta_raw"}
    assert sites["theta_raw"].shape == (8,) and sites["mu"].shape == ()
    np.testing.assert_array_equal(energy.ravel(sites), x)
    np.testing.assert_array_equal(energy.ravel(x), x)  # a flat vector passes through
    batch = jax.random.normal(jax.random.key(3), (3, 10))
    np.testing.assert_array_equal(jax.vmap(energy.ravel)(jax.vmap(energy.unravel)(batch)), batch)


def test_constrained_variables_match_numpyro(energy):
    x = jax.random.normal(jax.random.key(4), (10,))
    got = energy.variables(x)
    expected = constrain_fn(
        schools, (SIGMA,), {"y": Y}, energy.unravel(x), return_deterministic=True
    )
    assert set(got) == {"mu", "tau", "theta_raw", "theta"}  # deterministic in, observed out
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-6)
    np.testing.assert_allclose(got["tau"], jnp.exp(x[1]), rtol=1e-6)
    np.testing.assert_allclose(got["theta"], got["mu"] + got["tau"] * got["theta_raw"], rtol=1e-6)
    unconstrained = energy.variables(x, constrained=False)
    assert set(unconstrained) == {"mu", "tau", "theta_raw"}
    np.testing.assert_array_equal(unconstrained["tau"], x[1])
    for name, value in energy.constrain(x).items():
        np.testing.assert_array_equal(value, got[name])
    # the double vmap users had to write by hand works over (chains, draws)
    draws = jax.vmap(jax.vmap(energy.variables))(jnp.zeros((2, 3, 10)))
    assert draws["theta"].shape == (2, 3, 8) and draws["tau"].shape == (2, 3)


def test_shape_changing_transform():
    """A simplex site has one fewer unconstrained coordinate than constrained ones."""
    energy = de.from_numpyro(simplex_model, jnp.array([3.0, 5.0, 2.0]))
    assert energy.event_shape == (2,)
    p = energy.variables(jnp.array([0.3, -0.2]))["p"]
    assert p.shape == (3,)
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-6)


def test_initial_points_dispersed(energy):
    points = energy.initial_points(jax.random.key(5), 6)
    assert points.shape == (6, 10) and points.dtype == energy.dtype
    assert np.all(np.abs(np.asarray(points)) <= 2.0)
    assert len({tuple(np.asarray(p)) for p in points}) == 6  # every chain starts elsewhere
    assert np.all(np.isfinite(jax.vmap(energy.log_density)(points)))
    np.testing.assert_array_equal(points, energy.initial_points(jax.random.key(5), 6))  # same key
    assert not np.array_equal(points, energy.initial_points(jax.random.key(6), 6))
    assert energy.initial_position.shape == (10,)


def test_initial_points_prior_and_strategy():
    prior = de.from_numpyro(schools, SIGMA, y=Y, init_strategy="prior")
    points = prior.initial_points(jax.random.key(7), 200)
    assert np.all(np.isfinite(points))
    assert np.std(np.asarray(points[:, 0])) > 2.5  # mu ~ Normal(0, 5): wider than uniform(-2, 2)
    narrow = de.from_numpyro(
        schools, SIGMA, y=Y, init_strategy=numpyro.infer.init_to_uniform(radius=0.5)
    )
    assert np.all(np.abs(np.asarray(narrow.initial_points(jax.random.key(8), 4))) <= 0.5)


def test_dtype_follows_x64(x64):
    energy = de.from_numpyro(schools, SIGMA, y=Y)
    assert energy.dtype == jnp.float64
    assert energy.initial_points(jax.random.key(0), 2).dtype == jnp.float64
    assert energy.unravel(jnp.zeros(10, jnp.float32))["mu"].dtype == jnp.float64


def test_new_data_does_not_retrace():
    """Data are leaves of the energy: a new data set of the same shapes reuses the compiled code."""
    a = de.from_numpyro(schools, SIGMA, y=Y)
    b = de.from_numpyro(schools, 2.0 * SIGMA, y=-Y)
    assert jax.tree.structure(a) == jax.tree.structure(b)

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def logp_and_sites(energy, x):
        return energy.value_and_score(x), energy.variables(x)

    x = jnp.linspace(-1.0, 1.0, 10)
    (la, _), _ = logp_and_sites(a, x)
    (lb, _), _ = logp_and_sites(b, x)  # a second trace would raise
    assert not np.allclose(la, lb)  # ... and the new data are really used
    np.testing.assert_allclose(lb, b.log_density(x), rtol=1e-5)
    b.initial_points(jax.random.key(0), 3)
    a.initial_points(jax.random.key(0), 3)


def test_sample_twice_with_new_data_compiles_once():
    """Two `driftax.sample` runs on two data sets of the same shapes: one trace of the loop."""
    from driftax.samplers import _driver

    traced = getattr(_driver, "_run_traced", None)
    if traced is None:  # pragma: no cover - depends on the driver's internals
        pytest.skip("the driver exposes no trace counter")
    runs = []
    for sigma, y in [(SIGMA, Y), (SIGMA + 1.0, Y - 2.0)]:
        energy = de.from_numpyro(schools, sigma, y=y)
        x0 = energy.initial_points(jax.random.key(1), 2)
        before = eqx.debug.get_num_traces(traced)
        dx.sample(
            dx.samplers.MALA(step_size=0.05),
            energy,
            x0,
            key=jax.random.key(2),
            num_steps=20,
            num_warmup=10,
            num_chains=2,
        )
        runs.append(eqx.debug.get_num_traces(traced) - before)
    assert runs[1] == 0


def test_python_scalars_are_static():
    def model(n, scale):
        numpyro.sample("z", dist.Normal(0.0, scale).expand([n]))

    energy = de.from_numpyro(model, 3, scale=2.0)
    assert energy.event_shape == (3,)
    np.testing.assert_allclose(
        jax.jit(lambda x: energy.log_density(x))(jnp.ones(3)),
        dist.Normal(0.0, 2.0).log_prob(1.0) * 3,
        rtol=1e-6,
    )


def test_bad_input():
    with pytest.raises(TypeError, match="`model` must be a callable"):
        de.from_numpyro(3.0)

    def observed_only(y):
        numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)

    with pytest.raises(ValueError, match="no latent sample sites"):
        de.from_numpyro(observed_only, jnp.ones(3))

    def discrete(y):
        z = numpyro.sample("z", dist.Bernoulli(0.3))
        numpyro.sample("y", dist.Normal(z, 1.0), obs=y)

    with pytest.raises(ValueError, match="discrete latent site.*'z'.*enumeration .* not supported"):
        de.from_numpyro(discrete, jnp.ones(3))
    with pytest.raises(ValueError, match="`init_strategy` must be one of"):
        de.from_numpyro(schools, SIGMA, y=Y, init_strategy="zeros")
    with pytest.raises(TypeError, match="`init_strategy` must be one of"):
        de.from_numpyro(schools, SIGMA, y=Y, init_strategy=3)
    with pytest.raises(TypeError, match="could not be run"):
        de.from_numpyro(schools)  # missing argument
    energy = de.from_numpyro(schools, SIGMA, y=Y)
    with pytest.raises(ValueError, match="missing \\['theta_raw'\\]"):
        energy.ravel({"mu": 0.0, "tau": 0.0})
    with pytest.raises(ValueError, match="`x0\\['theta_raw'\\]` must have the unconstrained shape"):
        energy.ravel({"mu": 0.0, "tau": 0.0, "theta_raw": jnp.zeros(3)})
    with pytest.raises(ValueError, match="event shape"):
        energy.ravel(jnp.zeros(3))
    with pytest.raises(ValueError, match="`num` must be an int"):
        energy.initial_points(jax.random.key(0), 0)
