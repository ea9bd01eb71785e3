"""The numpyro workflow end to end: a non-centered hierarchical model through `from_numpyro` and
driftax's NUTS agrees with numpyro's own NUTS (posterior means within 4 combined MCSE), and the
result speaks the model's site names on the constrained scale."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import driftax as dx
import driftax.energies as de

NUM_CHAINS, NUM_WARMUP, NUM_DRAWS = 4, 500, 1000
SITES = {"mu": (), "tau": (), "theta_raw": (8,), "theta": (8,)}

# Eight groups with noisy measurements (means and known standard errors).
Y = jnp.array([21.0, 6.5, -4.0, 9.0, 0.5, 2.0, 15.0, 10.0])
SIGMA = jnp.array([14.0, 10.0, 16.0, 11.0, 9.0, 12.0, 10.0, 17.0])


def hierarchical(sigma, y=None):
    """Non-centered: group effects theta = mu + tau * theta_raw, theta_raw ~ N(0, 1)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("groups", sigma.shape[0]):
        theta_raw = numpyro.sample("theta_raw", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_raw)
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


@pytest.fixture(scope="module")
def reference():
    """numpyro's own NUTS on the same model and data: per-site means and MCSEs."""
    from numpyro.infer import MCMC, NUTS

    mcmc = MCMC(
        NUTS(hierarchical),
        num_warmup=NUM_WARMUP,
        num_samples=NUM_DRAWS,
        num_chains=NUM_CHAINS,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(20), SIGMA, y=Y)
    draws = mcmc.get_samples(group_by_chain=True)
    return _moments({name: draws[name] for name in SITES})


def _moments(draws):
    """Mean and MCSE of the mean per site, from `(chains, draws, ...)` arrays."""
    out = {}
    for name, value in draws.items():
        value = np.asarray(value, dtype=np.float64)
        assert value.shape == (NUM_CHAINS, NUM_DRAWS, *SITES[name]), name
        out[name] = (value.mean(axis=(0, 1)), dx.samplers.mcse(value, "mean"))
    return out


def _assert_agree(ours, theirs):
    for name in SITES:
        (m1, e1), (m2, e2) = ours[name], theirs[name]
        tol = 4.0 * np.sqrt(e1**2 + e2**2)
        assert np.all(np.abs(m1 - m2) < tol), (name, m1, m2, tol)


@pytest.mark.slow
def test_from_numpyro_nuts_matches_numpyro(reference):
    """The front door: `x0=None` starts every chain at a dispersed point; the result names the
    model's sites on the constrained scale (awaits the driver side of the energy boundary)."""
    energy = de.from_numpyro(hierarchical, SIGMA, y=Y)
    try:
        result = dx.sample(
            dx.samplers.NUTS(),
            energy,
            None,
            key=jax.random.key(21),
            num_steps=NUM_DRAWS,
            num_warmup=NUM_WARMUP,
            num_chains=NUM_CHAINS,
        )
    except ValueError as e:  # pragma: no cover - the driver before `x0=None` support
        if "`x0` must have" in str(e):
            pytest.skip("this driver does not start chains from `energy.initial_points` yet")
        raise
    posterior = result.to_arviz().posterior
    assert set(posterior.data_vars) == set(SITES)  # one variable per site, by name
    draws = {name: np.asarray(posterior[name].values) for name in SITES}
    assert np.all(draws["tau"] > 0.0)  # the constrained scale
    np.testing.assert_allclose(
        draws["theta"],
        draws["mu"][..., None] + draws["tau"][..., None] * draws["theta_raw"],
        rtol=1e-4,
        atol=1e-4,
    )
    constrained = result.draws(constrained=True)
    assert set(constrained) == set(SITES)
    np.testing.assert_allclose(np.asarray(constrained["tau"]), draws["tau"])
    assert "tau" in result.summary()
    _assert_agree(_moments(draws), reference)


@pytest.mark.slow
def test_from_numpyro_nuts_matches_numpyro_flat_driver(reference):
    """The same check through the flat interface every driver supports: dispersed starts from
    `initial_points`, draws mapped to sites with `energy.variables`."""
    energy = de.from_numpyro(hierarchical, SIGMA, y=Y)
    x0 = energy.initial_points(jax.random.key(22), NUM_CHAINS)
    assert len({tuple(np.asarray(p)) for p in x0}) == NUM_CHAINS
    result = dx.sample(
        dx.samplers.NUTS(),
        energy,
        x0,
        key=jax.random.key(21),
        num_steps=NUM_DRAWS,
        num_warmup=NUM_WARMUP,
        num_chains=NUM_CHAINS,
    )
    flat = result.samples
    if isinstance(flat, dict):  # the driver already unravels to unconstrained sites
        flat = jax.vmap(jax.vmap(energy.ravel))(flat)
    draws = jax.jit(jax.vmap(jax.vmap(energy.variables)))(flat)
    assert set(draws) == set(SITES)
    assert np.all(np.asarray(draws["tau"]) > 0.0)
    _assert_agree(_moments(draws), reference)
