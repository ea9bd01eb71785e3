"""Forward processes: the mean-reverting Ornstein–Uhlenbeck path towards mu (its coefficients
solve the OU SDE, its marginals match a simulation of that SDE, its exact mixture fields match
autodiff of the closed-form density, every solver and the denoising loss accept it)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax.diffusion as dd
import driftax.energies as de

from .helpers import small_mixture

MU = np.array([3.0, -1.5])


def _closed_form_log_density(mixture, path, t, x):
    """log p_t(x) written out: components N(mu + alpha (m_k - mu), (alpha^2 c_k^2 + sigma^2) I)."""
    a, s = jnp.exp(-path.theta * t), path.sigma_inf * jnp.sqrt(1 - jnp.exp(-2 * path.theta * t))
    mu = jnp.asarray(path.mean)
    means = mu + a * (mixture.means - mu)
    var = a**2 * mixture.scale_diag**2 + s**2
    logn = -0.5 * jnp.sum((x - means) ** 2 / var + jnp.log(2 * jnp.pi * var), axis=-1)
    return jax.scipy.special.logsumexp(mixture.log_weights + logn)


def test_coefficients_solve_the_ou_sde(x64):
    """For dx = f (x - mu) dt + g dW: f = alpha'/alpha = -theta and
    g^2 = (sigma^2)' - 2 f sigma^2 = 2 theta sigma_inf^2 at every t (jax.jvp); the closed-form
    inverse of the log-SNR round-trips; mean 0, sigma_inf 1 is VP with a constant beta = 2 theta."""
    path = dd.OrnsteinUhlenbeck(mean=MU, theta=1.7, sigma_inf=0.6)
    ts = jnp.linspace(0.01, 5.0, 23)
    a, da = path.alpha_and_derivative(ts)
    s, ds = path.sigma_and_derivative(ts)
    f = da / a
    np.testing.assert_allclose(f, -1.7, rtol=1e-12)
    np.testing.assert_allclose(2 * s * ds - 2 * f * s**2, 2 * 1.7 * 0.6**2, rtol=1e-10)
    np.testing.assert_allclose(path.t_from_half_log_snr(path.half_log_snr(ts)), ts, rtol=1e-10)
    np.testing.assert_allclose(path.half_log_snr(ts), jnp.log(a / s), rtol=1e-12)
    vp = dd.VP(beta_min=3.4, beta_max=3.4)
    ou = dd.OrnsteinUhlenbeck(theta=1.7)
    np.testing.assert_allclose(ou.alpha(ts), vp.alpha(ts), rtol=1e-12)
    np.testing.assert_allclose(ou.sigma(ts), vp.sigma(ts), rtol=1e-12)
    np.testing.assert_allclose(ou.epsilon(ts), vp.epsilon(ts), rtol=1e-9)


@pytest.mark.slow
def test_marginal_moments_match_a_simulation_of_the_sde():
    """Euler–Maruyama on dx = -theta (x - mu) dt + sigma_inf sqrt(2 theta) dW (2,000 fine steps)
    from a point reaches mean mu + alpha (x0 - mu) and variance sigma(t)^2 (4 MCSE plus the
    O(dt) bias bound); `path.noised` draws have the same moments."""
    theta, sig, t_end, n, steps = 1.5, 0.8, 0.9, 10_000, 1_000
    path = dd.OrnsteinUhlenbeck(mean=MU, theta=theta, sigma_inf=sig)
    x0 = jnp.array([-1.0, 2.0])
    dt = t_end / steps

    def body(x, k):
        z = jax.random.normal(k, x.shape)
        return x - theta * (x - MU) * dt + sig * jnp.sqrt(2 * theta * dt) * z, None

    keys = jax.random.split(jax.random.key(0), steps)
    x, _ = jax.jit(lambda x: jax.lax.scan(body, x, keys))(jnp.broadcast_to(x0, (n, 2)))
    x = np.asarray(x)
    a, s = float(path.alpha(t_end)), float(path.sigma(t_end))
    want_mean, want_var = MU + a * (np.asarray(x0) - MU), s**2
    bias = theta**2 * t_end * dt * np.abs(np.asarray(x0) - MU) + 2 * theta * dt * sig**2
    mcse_mean = np.sqrt(want_var / n)
    mcse_var = want_var * np.sqrt(2.0 / n)
    assert np.all(np.abs(x.mean(0) - want_mean) < 4 * mcse_mean + bias)
    assert np.all(np.abs(x.var(0) - want_var) < 4 * mcse_var + bias)
    e = jax.random.normal(jax.random.key(1), (n, 2))
    xn = np.asarray(jax.vmap(lambda e: path.noised(x0, e, t_end))(e))
    assert np.all(np.abs(xn.mean(0) - want_mean) < 4 * mcse_mean)
    assert np.all(np.abs(xn.var(0) - want_var) < 4 * mcse_var)


def test_exact_fields_match_autodiff_of_the_closed_form_density(x64):
    """log density, score (jax.grad), denoiser and noise (Tweedie), and the probability-flow
    velocity (the continuity equation d_t log p + div v + v · grad log p = 0, by jax.jacfwd);
    the path's conversions from the exact score give the same fields."""
    mixture = small_mixture()
    path = dd.OrnsteinUhlenbeck(mean=MU, theta=1.3, sigma_inf=0.9)
    exact = dd.OrnsteinUhlenbeckMixtureFields(mixture, path)
    logp = lambda t, x: _closed_form_log_density(mixture, path, t, x)

    @jax.jit
    def fields(t, x):
        s = path.sigma(t)
        score = jax.grad(logp, argnums=1)(t, x)
        v = exact.velocity(t, x)
        div = jnp.trace(jax.jacfwd(exact.velocity, argnums=1)(t, x))
        continuity = jax.grad(logp, argnums=0)(t, x) + div + v @ score
        conv = {
            tg: path.convert(score, t, x, source="score", target=tg)
            for tg in ("data", "velocity", "noise")
        }
        back = {
            tg: path.convert(want, t, x, source=tg, target="score")
            for tg, want in (("data", exact.denoise(t, x)), ("velocity", v), ("noise", -s * score))
        }
        return dict(
            logp=logp(t, x),
            ld=exact.log_density(t, x),
            score=score,
            got=exact.score(t, x),
            den=exact.denoise(t, x),
            noise=exact.noise(t, x),
            v=v,
            continuity=continuity,
            conv=conv,
            back=back,
        )

    points = (jnp.array([0.5, -0.3]), jnp.array([2.8, -1.2]), jnp.array([-2.0, 1.5]))
    for t, x in ((t, x) for t in (0.05, 0.6, 3.0) for x in points):
        t = jnp.float64(t)
        a, s = path.alpha(t), path.sigma(t)
        r = fields(t, x)
        score = r["score"]
        np.testing.assert_allclose(r["ld"], r["logp"], rtol=1e-12)
        np.testing.assert_allclose(r["got"], score, rtol=1e-10, atol=1e-12)
        tweedie = MU + (x - MU + s**2 * score) / a
        np.testing.assert_allclose(r["den"], tweedie, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(r["noise"], -s * score, rtol=1e-10, atol=1e-12)
        assert abs(float(r["continuity"])) < 1e-9
        for tg, want in (("data", r["den"]), ("velocity", r["v"]), ("noise", r["noise"])):
            np.testing.assert_allclose(r["conv"][tg], want, rtol=1e-9, atol=1e-10)
            np.testing.assert_allclose(r["back"][tg], score, rtol=1e-8, atol=1e-10)
    samples = exact.sample(jax.random.key(0), t, 20_000)
    want_mean = MU + a * (mixture.mean - MU)
    mcse = jnp.sqrt(jnp.var(samples, 0) / 20_000)
    assert np.all(np.abs(np.asarray(samples.mean(0) - want_mean)) < 4 * mcse)


SOLVERS = {
    "euler": (dd.Euler(), 200, "score"),
    "heun": (dd.Heun(), 40, "velocity"),
    "ddim": (dd.DDIM(), 100, "data"),
    "dpmpp2m": (dd.DPMSolverPP2M(), 25, "data"),
    "unipc": (dd.UniPC(), 25, "noise"),
    "ipndm": (dd.IPNDM(), 25, "score"),
    "deis": (dd.DEIS(), 25, "score"),
}


@pytest.fixture(scope="module")
def ou_setup():
    mixture = small_mixture()
    path = dd.OrnsteinUhlenbeck(mean=MU, theta=1.0)
    exact = dd.OrnsteinUhlenbeckMixtureFields(mixture, path)
    x_init = exact.sample(jax.random.key(3), path.t_noise, 128)
    with jax.enable_x64(True):
        x64_init = jnp.asarray(np.asarray(x_init), jnp.float64)
        path64 = dd.OrnsteinUhlenbeck(mean=jnp.asarray(MU), theta=1.0)
        exact64 = dd.OrnsteinUhlenbeckMixtureFields(small_mixture(), path64)
        ref = np.asarray(
            dd.solve(
                dd.Heun(),
                exact64.velocity,
                path64,
                x64_init,
                num_steps=400,
                parameterization="velocity",
            )
        )
    return mixture, path, exact, x_init, ref


FAST = ("dpmpp2m",)  # the others run in the slow suite


@pytest.mark.parametrize(
    "name",
    [
        n
        if n in FAST
        # the slow cases on one xdist worker (`--dist loadgroup`): `ou_setup` built once
        else pytest.param(n, marks=[pytest.mark.slow, pytest.mark.xdist_group("ou_solvers")])
        for n in SOLVERS
    ],
)
def test_every_solver_converges_to_the_flow_map_on_the_ou_path(ou_setup, name):
    """Each fixed-step solver, in its own parameterization, follows the probability-flow map
    (a float64 Heun-400 reference) from exact draws at t_noise: at the table's step count the
    mean error is small against the distance the flow moves the points (~3; a solver that
    ignored the mean would be off by O(|mu|)), and doubling the steps divides it by at least
    0.75 * 2^min(order, 2) (measured: Euler 1.99, DDIM 2.0, Heun 4.2, DPM-Solver++(2M) 4.1,
    UniPC 7.6, iPNDM 3.7, DEIS 5.8)."""
    mixture, path, exact, x_init, ref = ou_setup
    solver, steps, param = SOLVERS[name]
    field = {
        "score": exact.score,
        "noise": exact.noise,
        "data": exact.denoise,
        "velocity": exact.velocity,
    }[param]

    def err(n):
        x = dd.solve(solver, field, path, x_init, num_steps=n, parameterization=param)
        return float(np.mean(np.linalg.norm(np.asarray(x) - ref, axis=1)))

    e1, e2 = err(steps), err(2 * steps)
    assert e1 < 0.06, e1
    assert e1 / e2 > 0.75 * 2 ** min(solver.order, 2), (e1, e2)


def test_solve_is_shift_equivariant_and_does_not_retrace(ou_setup):
    """solve on OU(mu) equals solve on OU(0) with the data shifted by -mu, plus mu; a second
    call with the same shapes traces the field no more."""
    mixture, path, exact, x_init, _ = ou_setup
    shifted = eqx_shift(mixture, -MU)
    exact0 = dd.OrnsteinUhlenbeckMixtureFields(shifted, dd.OrnsteinUhlenbeck(theta=1.0))
    traces = []

    def counted(t, x):
        traces.append(1)
        return exact.denoise(t, x)

    solver = dd.DDIM()
    x = dd.solve(solver, counted, path, x_init, num_steps=12, parameterization="data")
    n = len(traces)
    x_again = dd.solve(solver, counted, path, x_init, num_steps=12, parameterization="data")
    assert len(traces) == n
    np.testing.assert_array_equal(x, x_again)
    x0 = dd.solve(
        solver, exact0.denoise, exact0.path, x_init - MU, num_steps=12, parameterization="data"
    )
    np.testing.assert_allclose(x, x0 + MU, atol=1e-5)
    traj = dd.solve(
        solver,
        exact.denoise,
        path,
        x_init,
        num_steps=12,
        parameterization="data",
        full_output=True,
        save_trajectory=True,
    ).trajectory
    np.testing.assert_allclose(traj[0], x_init, atol=1e-6)
    np.testing.assert_allclose(traj[-1], x, atol=1e-6)


def eqx_shift(mixture, delta):
    import equinox as eqx

    return eqx.tree_at(lambda m: m.means, mixture, mixture.means + jnp.asarray(delta))


@pytest.mark.parametrize(
    "target",
    [
        "data",
        pytest.param("velocity", marks=pytest.mark.slow),
        pytest.param("noise", marks=pytest.mark.slow),
    ],
)
def test_denoising_loss_is_minimised_by_the_exact_field(target):
    """On the OU path the exact field is the loss minimiser: with common random numbers,
    adding a constant offset +-delta to the exact output raises the loss, and the
    symmetric difference quotient (the cross term E[w (f - target)]) is within MC noise of 0."""
    mixture = small_mixture()
    path = dd.OrnsteinUhlenbeck(mean=MU, theta=1.0)
    exact = dd.OrnsteinUhlenbeckMixtureFields(mixture, path)
    fn = {"data": exact.denoise, "velocity": exact.velocity, "noise": exact.noise}[target]
    loss = dd.DenoisingLoss(path, target=target, weighting="none", time_sampling="uniform")

    def at(delta, key):
        model = dd.ParameterizedField(
            field=lambda t, x: fn(t, x) + delta, path=path, parameterization=target
        )
        k_data, k_loss = jax.random.split(key)  # fresh data too: the cross term is 0 on average
        return loss(model, mixture.sample(k_data, 500), key=k_loss)

    keys = jax.random.split(jax.random.key(1), 16)
    run = jax.jit(jax.vmap(lambda k: jnp.stack([at(d, k) for d in (0.0, 0.3, -0.3)])))
    l0, lp, lm = np.asarray(run(keys)).T
    assert l0.mean() < lp.mean() and l0.mean() < lm.mean()
    cross = (lp - lm) / (4 * 0.3)  # per key: the mean residual, zero in expectation
    assert abs(cross.mean()) < 4 * cross.std(ddof=1) / np.sqrt(len(cross))


def test_bad_input():
    with pytest.raises(ValueError, match="theta"):
        dd.OrnsteinUhlenbeck(theta=0.0)
    with pytest.raises(ValueError, match="sigma_inf"):
        dd.OrnsteinUhlenbeck(sigma_inf=-1.0)
    with pytest.raises(ValueError, match="mean"):
        dd.OrnsteinUhlenbeck(mean=jnp.array([0.0, jnp.nan]))
    with pytest.raises(ValueError, match="t_data"):
        dd.OrnsteinUhlenbeck(t_data=0.0)
    with pytest.raises(TypeError, match="path"):
        dd.OrnsteinUhlenbeckMixtureFields(small_mixture(), dd.VP())
    with pytest.raises(TypeError, match="mixture"):
        dd.OrnsteinUhlenbeckMixtureFields(de.gmm25().log_density, dd.OrnsteinUhlenbeck())
