"""Conditional models and classifier-free guidance: exact Gaussian predictions of the guided
law, a trained conditional model against exact conditional mixture fields, guidance intervals,
bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import driftax.diffusion as dd
import driftax.energies as de


def _gaussian(m, v, path):
    m, v = np.asarray(m, float), np.asarray(v, float)
    return de.NoisedGaussianMixture(de.gaussian_mixture(np.ones(1), m[None], v[None]), path)


def affine_moments(field, path, mean0, var0, num_steps=400):
    """Mean and variance at `t_data` of points moved by the probability-flow ODE of a score
    field that is affine and diagonal in x, from N(mean0, var0) at `t_noise` (RK4 on the moment
    ODEs `m' = A m + b`, `P' = 2 A P`, with `A`, `b` read off the velocity)."""
    ts = dd.time_grid(path, num_steps, "uniform")

    def coeffs(t):
        vel = lambda x: path.convert(field(t, x), t, x, source="score", target="velocity")
        b = vel(jnp.zeros(2))
        return vel(jnp.ones(2)) - b, b

    def rhs(t, y):
        m, p = y
        a, b = coeffs(t)
        return jnp.stack([a * m + b, 2 * a * p])

    def step(y, i):
        t0, t1 = ts[i], ts[i + 1]
        h = t1 - t0
        k1 = rhs(t0, y)
        k2 = rhs(t0 + h / 2, y + h / 2 * k1)
        k3 = rhs(t0 + h / 2, y + h / 2 * k2)
        k4 = rhs(t1, y + h * k3)
        return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), None

    y0 = jnp.stack([jnp.full(2, mean0), jnp.full(2, var0)])
    y, _ = jax.lax.scan(step, y0, jnp.arange(num_steps))
    return np.asarray(y[0]), np.asarray(y[1])


@pytest.mark.parametrize("interval", [None, (0.2, 0.7)])
def test_cfg_shift_matches_exact_prediction(interval):
    # Gaussian conditional and unconditional fields: the guided ODE is linear, so the law of
    # the guided samples is Gaussian with moments from the moment ODE (the CFG prediction).
    path = dd.VP()
    cond, uncond = _gaussian([1.0, -0.5], [0.3, 0.5], path), _gaussian([0.0, 0.0], [1.5, 1.0], path)
    n = 4000
    x0 = path.prior_sample(jax.random.key(0), (n, 2))
    sig2 = float(path.sigma(path.t_noise)) ** 2
    means = {}
    for w in (1.0, 3.0):
        g = dd.classifier_free_guidance(cond.score, uncond.score, w, interval=interval)
        xs = np.asarray(dd.solve(dd.Heun(), g, path, x0, num_steps=60))
        m, p = affine_moments(g, path, 0.0, sig2)
        np.testing.assert_array_less(np.abs(xs.mean(0) - m), 5 * np.sqrt(p / n) + 2e-3)
        np.testing.assert_array_less(np.abs(xs.var(0) - p), 5 * p * np.sqrt(2 / n) + 2e-3)
        means[w] = m
    # guidance pushes the conditional mean away from the unconditional one
    assert np.all(np.abs(means[3.0]) > np.abs(means[1.0]))
    np.testing.assert_allclose(means[1.0], [1.0, -0.5], atol=5e-3)


def test_guidance_interval_semantics():
    path = dd.VP()
    cond, uncond = _gaussian([1.0, 0.0], [0.3, 0.3], path), _gaussian([0.0, 0.0], [1.0, 1.0], path)
    g = dd.classifier_free_guidance(cond.score, uncond.score, 4.0, interval=(0.2, 0.5))
    full = dd.classifier_free_guidance(cond.score, uncond.score, 4.0)
    x = jnp.array([0.3, -0.2])
    np.testing.assert_allclose(g(0.3, x), full(0.3, x), rtol=1e-6)
    np.testing.assert_allclose(g(0.8, x), cond.score(0.8, x), rtol=1e-6)
    np.testing.assert_allclose(g(0.1, x), cond.score(0.1, x), rtol=1e-6)
    with pytest.raises(ValueError, match="interval"):
        dd.classifier_free_guidance(cond.score, uncond.score, 2.0, interval=(0.5, 0.2))
    with pytest.raises(ValueError, match="weight"):
        dd.classifier_free_guidance(cond.score, uncond.score, float("nan"))
    with pytest.raises(ValueError, match="weight"):
        dd.autoguidance(cond.score, uncond.score, float("inf"))


MEANS = np.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]])
VAR = 0.4


@pytest.fixture(scope="module")
def trained():
    path = dd.EDM()
    n = 4096
    labels = jax.random.randint(jax.random.key(0), (n,), 0, 3)
    x = MEANS[labels] + np.sqrt(VAR) * jax.random.normal(jax.random.key(1), (n, 2))
    net = dd.ConditionalMLP(2, key=jax.random.key(2), num_classes=3, hidden=64, depth=3)
    model = dd.ConditionalModel(net, path, num_classes=3, sigma_data=1.5)
    loss = dd.DenoisingLoss(path, label_dropout=0.2, sigma_data=1.5)
    model, losses = dd.fit(
        model,
        loss,
        x,
        context=labels,
        key=jax.random.key(3),
        optimizer=optax.adam(2e-3),
        num_steps=2000,
        batch_size=256,
    )
    return path, model, np.asarray(losses)


@pytest.mark.slow
def test_trained_conditional_model_follows_exact_cfg(trained):
    # The exact fields: class 0 is one Gaussian, the unconditional law the 3-class mixture.
    path, model, losses = trained
    assert np.all(np.isfinite(losses)) and losses[-100:].mean() < losses[:100].mean()
    mix = de.NoisedGaussianMixture(de.gaussian_mixture(np.ones(3), MEANS, np.full(3, VAR)), path)
    comp = _gaussian(MEANS[0], [VAR, VAR], path)
    n = 2000
    x0 = path.prior_sample(jax.random.key(4), (n, 2))
    shift = {}
    for w in (1.0, 3.0):
        exact = dd.classifier_free_guidance(comp.denoise, mix.denoise, w)
        ref = np.asarray(
            dd.solve(dd.Heun(), exact, path, x0, num_steps=32, parameterization="data")
        )
        got = np.asarray(
            dd.solve(
                dd.Heun(),
                model.guided(jnp.asarray(0), w),
                path,
                x0,
                num_steps=32,
                parameterization="data",
            )
        )
        mcse = np.sqrt(ref.var(0) / n)
        # the trained model's guided mean within model error of the exact CFG mean; guidance
        # amplifies the model's error (by about w), so the allowance grows with w
        allow = 0.1 if w == 1.0 else 0.25
        np.testing.assert_array_less(np.abs(got.mean(0) - ref.mean(0)), allow + 5 * mcse)
        shift[w] = (ref.mean(0), got.mean(0))
    exact_shift = shift[3.0][0] - shift[1.0][0]
    model_shift = shift[3.0][1] - shift[1.0][1]
    # CFG at w = 3 pushes class 0 away from the other classes (to the left); the model's shift
    # has the exact direction and size (within 30 %)
    assert exact_shift[0] < -0.2
    np.testing.assert_allclose(model_shift[0], exact_shift[0], rtol=0.3)
    # the unconditional field covers all three classes
    xs = np.asarray(
        dd.solve(dd.Heun(), model.unconditional(), path, x0, num_steps=32, parameterization="data")
    )
    nearest = np.argmin(((xs[:, None] - MEANS[None]) ** 2).sum(-1), 1)
    frac = np.bincount(nearest, minlength=3) / n
    np.testing.assert_array_less(np.abs(frac - 1 / 3), 5 * np.sqrt(2 / 9 / n) + 0.03)


def test_conditional_field_does_not_retrace():
    path = dd.EDM()
    net = dd.ConditionalMLP(2, key=jax.random.key(0), num_classes=3, hidden=8, depth=2)
    model = dd.ConditionalModel(net, path, num_classes=3)

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def evaluate(field, x):
        return jax.vmap(lambda y: field(0.5, y))(x)

    x = jnp.zeros((4, 2))
    a = evaluate(model.given(jnp.asarray(0)), x)
    b = evaluate(model.given(jnp.asarray(2)), x)  # another label: same trace
    assert not np.allclose(a, b)


def test_vector_context_and_bad_input():
    path = dd.EDM()
    net = dd.ConditionalMLP(2, key=jax.random.key(0), context_shape=3, hidden=8, depth=2)
    model = dd.ConditionalModel(net, path, context_shape=3)
    x = jnp.ones((2,))
    out_c = model(1.0, x, jnp.ones(3))
    out_u = model.unconditional()(1.0, x)
    assert out_c.shape == (2,) and out_u.shape == (2,)
    # the null context ignores the vector
    np.testing.assert_allclose(model(1.0, x, jnp.ones(3), True), out_u, rtol=1e-6)
    with pytest.raises(ValueError, match="context"):
        model.given(jnp.ones(2))
    with pytest.raises(TypeError, match="context"):
        model.given(jnp.ones(3, jnp.int32))
    lab = dd.ConditionalModel(
        dd.ConditionalMLP(2, key=jax.random.key(0), num_classes=3, hidden=8, depth=2),
        path,
        num_classes=3,
    )
    with pytest.raises(TypeError, match="context"):
        lab.given(jnp.asarray(1.0))
    with pytest.raises(ValueError, match="labels"):
        lab.given(jnp.asarray(3))
    with pytest.raises(ValueError, match="context"):
        lab.given(jnp.zeros(2, jnp.int32))
    with pytest.raises(ValueError, match="label_dropout"):
        dd.DenoisingLoss(path, label_dropout=1.5)
    with pytest.raises(ValueError, match="label_dropout"):
        dd.DenoisingLoss(path, label_dropout=-0.1)
    with pytest.raises(ValueError, match="exactly one"):
        dd.ConditionalMLP(2, key=jax.random.key(0), num_classes=3, context_shape=2)
    data = jnp.zeros((8, 2))
    opt = optax.adam(1e-3)
    with pytest.raises(ValueError, match="context"):
        dd.fit(lab, dd.DenoisingLoss(path), data, key=jax.random.key(0), optimizer=opt, num_steps=1)
    plain = dd.Denoiser(net=dd.MLP(2, key=jax.random.key(0), hidden=8, depth=2), path=path)
    # a context with the wrong number of rows; a context for a model that takes none
    for model, rows, error, match in [
        (lab, 5, ValueError, "context"),
        (plain, 8, TypeError, "ConditionalModel"),
    ]:
        with pytest.raises(error, match=match):
            dd.fit(
                model,
                dd.DenoisingLoss(path),
                data,
                context=jnp.zeros(rows, jnp.int32),
                key=jax.random.key(0),
                optimizer=opt,
                num_steps=1,
            )
