"""Paths, parameterization conversions and time grids, against the exact noised-mixture fields."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax.diffusion as dd
import driftax.energies as de

from .helpers import small_mixture

PATHS = [
    dd.VP(),
    dd.SubVP(),
    dd.CosineVP(),
    dd.VE(),
    dd.EDM(),
    dd.LinearInterpolant(),
    dd.TrigonometricInterpolant(),
    dd.KineticOptimalPath(data_scale=0.5),
    dd.OrnsteinUhlenbeck(theta=0.8, sigma_inf=1.5),  # mean 0: NoisedGaussianMixture is exact
]
IDS = [type(p).__name__ for p in PATHS]


def _interior_times(path, n=5):
    lo, hi = sorted([path.t_data, path.t_noise])
    if path.t_noise == 1.0 and isinstance(path, dd.LinearInterpolant):
        hi = 0.99
    return jnp.linspace(lo, hi, n + 2)[1:-1]


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_conversions_match_exact_fields(path, x64):
    field = de.NoisedGaussianMixture(small_mixture(), path)
    x = jnp.array([0.7, -1.3])
    for t in _interior_times(path):
        exact = {
            "score": field.score(t, x),
            "noise": field.noise(t, x),
            "data": field.denoise(t, x),
            "velocity": field.velocity(t, x),
        }
        for source, value in exact.items():
            for target, want in exact.items():
                got = path.convert(value, t, x, source=source, target=target)
                np.testing.assert_allclose(
                    got, want, rtol=1e-8, atol=1e-8, err_msg=f"{source}->{target}"
                )


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_field_base_conversions_round_trip(path, x64):
    """An `AbstractField` in any parameterization gives every other one through its methods,
    and `as_(b).as_(a)` returns the original field's values (float64)."""
    exact_field = de.NoisedGaussianMixture(small_mixture(), path)
    fns = {
        "score": exact_field.score,
        "noise": exact_field.noise,
        "data": exact_field.denoise,
        "velocity": exact_field.velocity,
    }
    x = jnp.array([0.7, -1.3])
    for t in _interior_times(path, 3):
        want = {k: f(t, x) for k, f in fns.items()}
        for source, fn in fns.items():
            model = dd.NetworkField(net=fn, path=path, parameterization=source)
            assert isinstance(model, dd.AbstractField)
            got = {
                "score": model.score(t, x),
                "noise": model.noise(t, x),
                "data": model.denoise(t, x),
                "velocity": model.velocity(t, x),
            }
            many = model.get_many(t, x, tuple(want))
            for i, (target, value) in enumerate(want.items()):
                np.testing.assert_allclose(got[target], value, rtol=1e-8, atol=1e-8)
                np.testing.assert_allclose(many[i], value, rtol=1e-8, atol=1e-8)
                converted = model.as_(target)
                assert converted.parameterization == target and converted.path is path
                np.testing.assert_allclose(converted(t, x), value, rtol=1e-8, atol=1e-8)
                back = converted.as_(source)
                np.testing.assert_allclose(back(t, x), want[source], rtol=1e-8, atol=1e-8)
            assert model.as_(source) is model


def test_field_declarations_are_checked(x64):
    """A declared parameterization or path that disagrees with `solve`'s arguments raises."""
    path = dd.VP()
    model = dd.NetworkField(net=lambda t, x: -x, path=path, parameterization="score")
    x0 = jnp.zeros((2, 2))
    with pytest.raises(ValueError, match="parameterization"):
        dd.solve(dd.Euler(), model, path, x0, num_steps=2, parameterization="noise")
    with pytest.raises(ValueError, match="path"):
        dd.solve(dd.Euler(), model, dd.VE(), x0, num_steps=2)
    with pytest.raises(ValueError, match="parameterization"):
        dd.ParameterizedField(field=model, path=path, parameterization="data")
    guided = dd.Guided(field=model, guide=model, weight=2.0)
    assert isinstance(guided, dd.AbstractField) and guided.parameterization == "score"
    np.testing.assert_allclose(guided.denoise(0.5, jnp.ones(2)), model.denoise(0.5, jnp.ones(2)))


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_derivatives_and_log_snr_inverse(path, x64):
    ts = _interior_times(path)
    for t in ts:
        a, da = path.alpha_and_derivative(t)
        s, ds = path.sigma_and_derivative(t)
        h = 1e-6 * max(1.0, float(t))
        np.testing.assert_allclose(
            da, (path.alpha(t + h) - path.alpha(t - h)) / (2 * h), rtol=1e-5, atol=1e-8
        )
        np.testing.assert_allclose(
            ds, (path.sigma(t + h) - path.sigma(t - h)) / (2 * h), rtol=1e-5, atol=1e-8
        )
        np.testing.assert_allclose(path.half_log_snr(t), jnp.log(a / s), rtol=1e-10)
        eps = path.epsilon(t)
        assert eps >= 0
    lam = path.half_log_snr(ts)
    np.testing.assert_allclose(path.t_from_half_log_snr(lam), ts, rtol=1e-8)
    # the generic bisection agrees with any closed form
    generic = dd.AbstractPath.t_from_half_log_snr(path, lam)
    np.testing.assert_allclose(generic, ts, rtol=1e-8)


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_marginal_matches_noising(path, x64):
    """`path.noised` of exact data draws has the law `NoisedGaussianMixture.at(t)` (moments)."""
    mix = small_mixture()
    t = _interior_times(path, 1)[0]
    k1, k2 = jax.random.split(jax.random.key(3))
    n = 20000
    xt = path.noised(mix.sample(k1, n), jax.random.normal(k2, (n, 2)), t)
    exact = de.NoisedGaussianMixture(mix, path).at(t)
    sd = np.sqrt(np.asarray(exact.variance))
    np.testing.assert_allclose(xt.mean(0), exact.mean, atol=5 * float(sd.max()) / np.sqrt(n))


@pytest.mark.parametrize("schedule", ["uniform", "log_snr", "karras", "quadratic"])
def test_time_grids(schedule, x64):
    path = dd.VP()
    ts = np.asarray(dd.time_grid(path, 12, schedule))
    assert ts.shape == (13,)
    assert ts[0] == path.t_noise and ts[-1] == path.t_data
    assert np.all(np.diff(ts) < 0)
    dd.check_grid(path, ts)
    lam = np.asarray(path.half_log_snr(ts))
    if schedule == "log_snr":
        np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=1e-8)
    if schedule == "karras":
        s = np.exp(-lam)
        r = s ** (1 / 7.0)
        np.testing.assert_allclose(np.diff(r), np.diff(r)[0], rtol=1e-7)


def test_karras_grid_on_edm_is_the_edm_schedule(x64):
    path = dd.EDM()
    n, rho = 18, 7.0
    ts = np.asarray(dd.time_grid(path, n, "karras", rho=rho))
    i = np.arange(n + 1)
    want = (80.0 ** (1 / rho) + i / n * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho
    np.testing.assert_allclose(ts, want, rtol=1e-10)


def test_time_grid_bad_input():
    with pytest.raises(ValueError, match="schedule"):
        dd.time_grid(dd.VP(), 10, "cosine")
    with pytest.raises(ValueError, match="num_steps"):
        dd.time_grid(dd.VP(), 0)
    with pytest.raises(TypeError, match="num_steps"):
        dd.time_grid(dd.VP(), 3.5)
    with pytest.raises(ValueError, match="finite log-SNR"):
        dd.time_grid(dd.LinearInterpolant(), 10, "log_snr")
    with pytest.raises(ValueError, match="domain"):
        dd.VP(t_noise=1.5)
    with pytest.raises(ValueError, match="t_data"):
        dd.VP(t_data=0.0)
    with pytest.raises(ValueError, match="differ"):
        dd.LinearInterpolant(t_data=0.5, t_noise=0.5)
