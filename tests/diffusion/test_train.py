"""Networks, models, losses and the training loop.

Sized (CPU): the slow gmm25 runs train as long as their acceptance bound needs (EDM 3000
steps, MeanFlow 1500; each docstring gives the measured margin and what still fails)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import driftax.diffusion as dd
import driftax.energies as de


def test_mlp_shapes_and_time_embedding():
    net = dd.MLP(3, key=jax.random.key(0), hidden=16, depth=3)
    out = net(0.3, jnp.ones(3))
    assert out.shape == (3,)
    assert jax.vmap(net)(jnp.linspace(0, 1, 4), jnp.ones((4, 3))).shape == (4, 3)
    two = dd.MLP(2, key=jax.random.key(0), hidden=16, num_times=2)
    assert two(jnp.array([0.1, 0.5]), jnp.ones(2)).shape == (2,)
    with pytest.raises(ValueError, match="shape"):
        net(0.3, jnp.ones(2))
    with pytest.raises(ValueError, match="depth"):
        dd.MLP(2, key=jax.random.key(0), depth=1)


def test_denoiser_preconditioning(x64):
    path = dd.VP()
    net = dd.MLP(2, key=jax.random.key(0), hidden=8)
    model = dd.Denoiser(net=net, path=path, sigma_data=0.5)
    t, x = 0.4, jnp.array([0.2, -0.3])
    a, s = path.alpha(t), path.sigma(t)
    sv = s / a
    c_skip = 0.25 / (sv**2 + 0.25)
    c_out = sv * 0.5 / jnp.sqrt(sv**2 + 0.25)
    c_in = 1 / jnp.sqrt(sv**2 + 0.25)
    want = c_skip * x / a + c_out * net(jnp.log(sv) / 4, c_in * x / a)
    np.testing.assert_allclose(model(t, x), want, rtol=1e-12)
    assert model.parameterization == "data"
    np.testing.assert_allclose(
        model.as_("score")(t, x), path.convert(model(t, x), t, x, source="data", target="score")
    )


def test_denoising_loss_is_minimised_by_the_exact_field():
    """The true denoiser has a lower loss than perturbed ones, for every target/weighting."""
    mix = de.gaussian_mixture(np.ones(2), np.array([[-2.0, 0.0], [2.0, 0.0]]), 0.5)
    data = mix.sample(jax.random.key(0), 4000)
    for path, target, weighting, sampling in [
        (dd.EDM(), "data", "edm", "log_normal"),
        (dd.VP(), "noise", "none", "uniform"),
        (dd.LinearInterpolant(), "velocity", "none", "uniform"),
    ]:
        exact = de.NoisedGaussianMixture(mix, path)
        loss = dd.DenoisingLoss(
            path=path, target=target, weighting=weighting, time_sampling=sampling
        )
        good = dd.NetworkField(net=exact.denoise, path=path, parameterization="data")
        bad = dd.NetworkField(
            net=lambda t, x, e=exact: 0.9 * e.denoise(t, x), path=path, parameterization="data"
        )
        key = jax.random.key(1)
        assert float(loss(good, data, key=key)) < float(loss(bad, data, key=key)), target


def test_ot_coupling_shortens_pairs():
    x = jax.random.normal(jax.random.key(0), (128, 2))
    y = jax.random.normal(jax.random.key(1), (128, 2))
    paired = dd.ot_coupling(jax.random.key(2), x, y)
    assert paired.shape == y.shape
    assert float(jnp.mean(jnp.sum((x - paired) ** 2, -1))) < 0.5 * float(
        jnp.mean(jnp.sum((x - y) ** 2, -1))
    )


@pytest.mark.parametrize("coupling", ["independent", "ot"])
def test_flow_matching_learns_a_gaussian(coupling):
    """A short flow-matching run moves N(0, I) to N(m, 0.5² I): sample mean within MCSE-based
    tolerance of m (the model error dominates, so a loose multiple)."""
    m = jnp.array([2.0, -1.0])
    data = m + 0.5 * jax.random.normal(jax.random.key(0), (4000, 2))
    path = dd.LinearInterpolant(t_data=0.0, t_noise=1.0)
    net = dd.MLP(2, key=jax.random.key(1), hidden=32, depth=2)
    model = dd.NetworkField(net=net, path=path, parameterization="velocity")
    trained, losses = dd.fit(
        model,
        dd.flow_matching_loss(coupling),
        data,
        key=jax.random.key(2),
        optimizer=optax.adam(3e-3),
        num_steps=400,
        batch_size=128,
    )
    assert losses.shape == (400,)
    assert float(losses[-50:].mean()) < float(losses[:50].mean())
    x = dd.solve(
        dd.Heun(),
        trained,
        path,
        path.prior_sample(jax.random.key(3), (1000, 2)),
        num_steps=20,
        parameterization="velocity",
        schedule="uniform",
    )
    np.testing.assert_allclose(x.mean(0), m, atol=0.2)
    np.testing.assert_allclose(x.std(0), 0.5, atol=0.15)


def test_fit_progress_bar_ema_and_bad_input(capsys):
    data = jax.random.normal(jax.random.key(0), (256, 2))
    path = dd.EDM()
    model = dd.Denoiser(net=dd.MLP(2, key=jax.random.key(1), hidden=8, depth=2), path=path)
    loss = dd.DenoisingLoss(path=path)
    opt = optax.adam(1e-3)
    a, la = dd.fit(
        model,
        loss,
        data,
        key=jax.random.key(2),
        optimizer=opt,
        num_steps=30,
        batch_size=32,
        progress=True,
    )
    b, lb = dd.fit(
        model, loss, data, key=jax.random.key(2), optimizer=opt, num_steps=30, batch_size=32
    )
    np.testing.assert_allclose(la, lb, rtol=1e-5)  # the progress bar does not change the run
    leaves = lambda m: jax.tree.leaves(eqx.filter(m, eqx.is_inexact_array))
    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="data"):
        dd.fit(model, loss, data[0], key=jax.random.key(0), optimizer=opt, num_steps=5)
    with pytest.raises(ValueError, match="ema_decay"):
        dd.fit(model, loss, data, key=jax.random.key(0), optimizer=opt, num_steps=5, ema_decay=1.5)
    with pytest.raises(TypeError, match="optimizer"):
        dd.fit(model, loss, data, key=jax.random.key(0), optimizer="adam", num_steps=5)


def test_model_declares_its_parameterization_and_path():
    path = dd.EDM()
    model = dd.Denoiser(net=dd.MLP(2, key=jax.random.key(1), hidden=8, depth=2), path=path)
    x0 = path.prior_sample(jax.random.key(0), (3, 2))
    with pytest.raises(ValueError, match="parameterization"):
        dd.solve(dd.Heun(), model, path, x0, num_steps=4, parameterization="score")
    with pytest.raises(ValueError, match="path"):
        dd.solve(dd.Heun(), model, dd.VE(), x0, num_steps=4, parameterization="data")
    out = dd.solve(dd.Heun(), model.as_("score"), path, x0, num_steps=4)
    assert out.shape == x0.shape


def test_meanflow_loss_and_sampler():
    data = 2.0 + 0.5 * jax.random.normal(jax.random.key(0), (2000, 2))
    net = dd.MLP(2, key=jax.random.key(1), hidden=32, depth=2, num_times=2)
    model = dd.MeanFlowModel(net=net)
    trained, losses = dd.fit(
        model,
        dd.MeanFlowLoss(time_sampling="uniform"),
        data,
        key=jax.random.key(2),
        optimizer=optax.adam(3e-3),
        num_steps=300,
        batch_size=128,
    )
    assert np.all(np.isfinite(losses))
    x = dd.meanflow_sample(trained, jax.random.normal(jax.random.key(3), (1000, 2)), num_steps=4)
    assert x.shape == (1000, 2)
    np.testing.assert_allclose(x.mean(0), [2.0, 2.0], atol=0.3)


class _ExactMeanFlow(eqx.Module):
    """The exact average velocity for data N(m, s² I) on z_t = (1 - t) x + t eps."""

    m: float
    s: float

    def __call__(self, r, t, z):
        mu = lambda u: (1 - u) * self.m
        sd = lambda u: jnp.sqrt((1 - u) ** 2 * self.s**2 + u**2)
        z_r = mu(r) + sd(r) / sd(t) * (z - mu(t))
        dsd = ((t - 1) * self.s**2 + t) / sd(t)
        v = -self.m + dsd / sd(t) * (z - mu(t))
        gap = t - r
        safe = jnp.where(jnp.abs(gap) > 1e-7, gap, 1.0)
        return jnp.where(jnp.abs(gap) > 1e-7, (z - z_r) / safe, v)


def test_meanflow_target_is_consistent_with_the_exact_average_velocity(x64):
    """The exact `u` minimises the (unweighted) MeanFlow loss: perturbing it costs more."""
    data = 1.5 + 0.7 * jax.random.normal(jax.random.key(0), (20000, 1))
    loss = dd.MeanFlowLoss(adaptive_p=0.0, fraction_mean=1.0, time_sampling="uniform")
    exact = _ExactMeanFlow(1.5, 0.7)
    key = jax.random.key(1)
    base = float(loss(exact, data, key=key))
    for bad in (
        lambda r, t, z: exact(r, t, z) + 0.1,
        lambda r, t, z: 1.1 * exact(r, t, z),
        lambda r, t, z: exact(r, t, z) + 0.2 * (t - r),
    ):
        assert base < float(loss(bad, data, key=key))


# ---------------------------------------------------------------------- slow: gmm25 training


def _gmm25_baseline(target, n=2000):
    ref = target.sample(jax.random.key(4), n)
    return ref, float(de.energy_distance(target.sample(jax.random.key(5), n), ref))


@pytest.mark.slow
def test_edm_on_gmm25_energy_distance():
    """EDM denoising score matching on gmm25 samples: energy distance of 2000 Heun samples
    ≤ 2× the data–data baseline. Sized at 3000 Adam steps from lr 4e-3 (was 6000 from 2e-3,
    measured ≈ 1.2×): measured 1.34×; the check has power: 4000 steps from 2e-3 stop at 2.6×,
    and the trained samples scaled by 1.1 give ≈ 15×."""
    target = de.gmm25()
    data = target.sample(jax.random.key(0), 20000)
    path = dd.EDM()
    sd = 2.0
    model = dd.Denoiser(
        net=dd.MLP(2, key=jax.random.key(1), hidden=256, depth=3, max_frequency=16.0),
        path=path,
        sigma_data=sd,
    )
    loss = dd.DenoisingLoss(path=path, sigma_data=sd, p_mean=-0.5, p_std=1.5)
    steps = 3000
    trained, _ = dd.fit(
        model,
        loss,
        data,
        key=jax.random.key(2),
        optimizer=optax.adam(optax.cosine_decay_schedule(4e-3, steps)),
        num_steps=steps,
        batch_size=512,
    )
    x0 = path.prior_sample(jax.random.key(3), (2000, 2))
    x = dd.solve(
        dd.Heun(), trained, path, x0, num_steps=32, parameterization="data", schedule="karras"
    )
    ref, base = _gmm25_baseline(target)
    assert float(de.energy_distance(x, ref)) <= 2.0 * base


@pytest.mark.slow
def test_meanflow_one_step_covers_gmm25():
    """MeanFlow on gmm25: one-step samples hit all 25 modes. Sized at 1500 Adam steps (was 3000;
    ~21 instead of ~31 CPU-s): 1500 steps still cover all 25, while an under-trained 1000-step
    run (hidden 128) misses a mode, so the check still detects a model that is not there yet."""
    target = de.gmm25()
    data = target.sample(jax.random.key(0), 20000)
    model = dd.MeanFlowModel(
        net=dd.MLP(2, key=jax.random.key(1), hidden=256, depth=3, max_frequency=16.0, num_times=2)
    )
    steps = 1500
    trained, _ = dd.fit(
        model,
        dd.MeanFlowLoss(),
        data,
        key=jax.random.key(2),
        optimizer=optax.adam(optax.cosine_decay_schedule(2e-3, steps)),
        num_steps=steps,
        batch_size=256,
    )
    x = dd.meanflow_sample(trained, jax.random.normal(jax.random.key(3), (2000, 2)), num_steps=1)
    cov = de.mode_coverage(x, target)
    assert int(cov.num_covered) == 25


_SHARDED = """
import jax, jax.numpy as jnp, numpy as np, optax
import driftax.diffusion as dd
assert jax.device_count() == 4, jax.devices()
data = 1.0 + 0.5 * jax.random.normal(jax.random.key(0), (512, 2))
path = dd.EDM()
model = dd.Denoiser(net=dd.MLP(2, key=jax.random.key(1), hidden=16, depth=2), path=path)
from driftax.diffusion._train import _data_sharding
assert _data_sharding(64) is not None
_, losses = dd.fit(model, dd.DenoisingLoss(path=path), data, key=jax.random.key(2),
                   optimizer=optax.adam(1e-3), num_steps=20, batch_size=64)
print(repr(np.asarray(losses).tolist()))
"""


@pytest.mark.slow
def test_fit_shards_the_batch_over_devices():
    """With 4 (CPU) devices the batch is sharded; the losses equal the single-device run."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    out = subprocess.run([sys.executable, "-c", _SHARDED], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    sharded = np.array(eval(out.stdout.strip().splitlines()[-1]))
    data = 1.0 + 0.5 * jax.random.normal(jax.random.key(0), (512, 2))
    path = dd.EDM()
    model = dd.Denoiser(net=dd.MLP(2, key=jax.random.key(1), hidden=16, depth=2), path=path)
    _, single = dd.fit(
        model,
        dd.DenoisingLoss(path=path),
        data,
        key=jax.random.key(2),
        optimizer=optax.adam(1e-3),
        num_steps=20,
        batch_size=64,
    )
    np.testing.assert_allclose(sharded, np.asarray(single), rtol=1e-4, atol=1e-6)
