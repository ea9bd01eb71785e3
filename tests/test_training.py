"""The shared training loop (driftax/_training.py)."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from driftax import _training as tr


def _quadratic(model, batch, *, key):
    """Key-only: `|w - c|²`; aux = the parameters the step saw."""
    del batch, key
    return jnp.sum((model["w"] - jnp.array([1.0, -2.0])) ** 2), model["w"]


class _StepIndex(tr.AbstractBatcher):
    """Batch = the step index (to place a non-finite step exactly)."""

    def next(self, state, model, key, step):
        return step, state


class _NaNAt(eqx.Module):
    bad: int = eqx.field(static=True)

    def __call__(self, model, batch, *, key):
        value, aux = _quadratic(model, None, key=key)
        return jnp.where(batch == self.bad, jnp.nan, value), aux


def test_nonfinite_step_is_skipped_counted_and_warned_once():
    opt = optax.adam(0.1)
    model = {"w": jnp.zeros(2)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, hist = tr.train(
            model,
            _NaNAt(bad=3),
            _StepIndex(),
            key=jax.random.key(0),
            optimizer=opt,
            num_steps=7,
        )
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(runtime) == 1 and "non-finite" in str(runtime[0].message)
    assert hist.num_nonfinite == 1
    np.testing.assert_array_equal(np.asarray(hist.finite), [1, 1, 1, 0, 1, 1, 1])
    aux = np.asarray(hist.aux)
    np.testing.assert_array_equal(aux[4], aux[3])  # parameters unchanged by the skipped step
    # optimizer state unchanged too: the run equals six good steps (adam's count and moments
    # did not see the skipped step)
    ref, _ = tr.train(
        model, _NaNAt(bad=-1), _StepIndex(), key=jax.random.key(0), optimizer=opt, num_steps=6
    )
    np.testing.assert_allclose(out["w"], ref["w"], rtol=1e-6)


def test_ema_matches_its_recurrence_on_a_quadratic():
    lr, decay, n = 0.1, 0.8, 25
    out, _ = tr.train(
        {"w": jnp.zeros(2)},
        _quadratic,
        key=jax.random.key(0),
        optimizer=optax.sgd(lr),
        num_steps=n,
        ema_decay=decay,
    )
    c = np.array([1.0, -2.0])
    w = np.zeros(2)
    ema = w.copy()
    for i in range(n):
        w = w - lr * 2 * (w - c)
        d = min(decay, (1 + i) / (10 + i))
        ema = d * ema + (1 - d) * w
    np.testing.assert_allclose(out["w"], ema, rtol=1e-5)
    plain, _ = tr.train(
        {"w": jnp.zeros(2)}, _quadratic, key=jax.random.key(0), optimizer=optax.sgd(lr), num_steps=n
    )
    np.testing.assert_allclose(plain["w"], w, rtol=1e-5)


def _two_params(model, batch, *, key):
    return jnp.sum((model["a"] - 1.0) ** 2) + jnp.sum((model["b"] + 1.0) ** 2)


@pytest.mark.parametrize("spec", ["tree", "function"])
def test_filter_spec_freezes_what_it_should(spec):
    model = {"a": jnp.zeros(3), "b": jnp.zeros(2), "n": jnp.arange(2)}
    if spec == "tree":
        filter_spec = {"a": True, "b": False, "n": True}  # an int array never trains
    else:
        filter_spec = lambda leaf: eqx.is_inexact_array(leaf) and leaf.shape == (3,)
    out, hist = tr.train(
        model,
        _two_params,
        key=jax.random.key(0),
        optimizer=optax.sgd(0.1),
        num_steps=20,
        filter_spec=filter_spec,
    )
    assert hist.aux is None
    np.testing.assert_array_equal(out["b"], 0.0)
    np.testing.assert_array_equal(out["n"], model["n"])
    assert float(jnp.max(jnp.abs(out["a"] - 1.0))) < 0.1


def _mean_fit(model, batch, *, key):
    return jnp.mean((model["w"] - batch) ** 2), batch


def test_second_fit_with_the_same_shapes_does_not_recompile():
    opt = optax.adam(1e-2)
    data = jax.random.normal(jax.random.key(0), (40, 2))
    kw = dict(optimizer=opt, num_steps=12)
    tr.train({"w": jnp.zeros(2)}, _mean_fit, tr.Minibatches(data, 8), key=jax.random.key(1), **kw)
    before = eqx.debug.get_num_traces(tr._compiled.__wrapped__)
    tr.train(
        {"w": jnp.ones(2)}, _mean_fit, tr.Minibatches(data + 1, 8), key=jax.random.key(2), **kw
    )
    tr.train({"w": jnp.ones(2)}, _mean_fit, tr.Minibatches(data, 8), key=jax.random.key(3), **kw)
    assert eqx.debug.get_num_traces(tr._compiled.__wrapped__) == before


def test_minibatch_epochs_visit_every_row_once_and_replacement_draws():
    data = jnp.arange(12.0)[:, None]
    _, hist = tr.train(
        {"w": jnp.zeros(1)},
        _mean_fit,
        tr.Minibatches(data, 4),
        key=jax.random.key(0),
        optimizer=optax.sgd(0.1),
        num_steps=6,
    )
    rows = np.asarray(hist.aux)[..., 0]  # (6, 4)
    _, again = tr.train(
        {"w": jnp.zeros(1)},
        _mean_fit,
        data,  # a dataset plus batch_size: the same epochs
        key=jax.random.key(0),
        optimizer=optax.sgd(0.1),
        num_steps=6,
        batch_size=4,
    )
    np.testing.assert_array_equal(np.asarray(again.aux)[..., 0], rows)
    for epoch in (rows[:3], rows[3:]):
        np.testing.assert_array_equal(np.sort(epoch.ravel()), np.arange(12.0))
    assert not np.array_equal(rows[:3], rows[3:])  # reshuffled
    _, hist = tr.train(
        {"w": jnp.zeros(1)},
        _mean_fit,
        tr.Minibatches(data, 16, replace=True),
        key=jax.random.key(0),
        optimizer=optax.sgd(0.1),
        num_steps=3,
    )
    assert np.asarray(hist.aux).shape == (3, 16, 1)


def _noisy(model, batch, *, key):
    assert batch is None
    return jnp.sum((model["w"] - jax.random.normal(key, (2,))) ** 2)


def test_key_only_loss_and_determinism():
    kw = dict(optimizer=optax.adam(0.05), num_steps=30)
    a, ha = tr.train({"w": jnp.zeros(2)}, _noisy, key=jax.random.key(4), **kw)
    b, hb = tr.train({"w": jnp.zeros(2)}, _noisy, key=jax.random.key(4), **kw)
    c, _ = tr.train({"w": jnp.zeros(2)}, _noisy, key=jax.random.key(5), **kw)
    np.testing.assert_array_equal(ha.losses, hb.losses)
    np.testing.assert_array_equal(a["w"], b["w"])
    assert not np.array_equal(a["w"], c["w"])
    assert ha.losses.shape == (30,) and ha.num_nonfinite == 0 and ha.num_steps_taken == 30


class _Validation(eqx.Module):
    def __call__(self, model):
        # improves while w approaches 0.5 and gets worse after
        return jnp.sum((model["w"] - 0.5) ** 2)


def test_validation_returns_best_and_patience_stops():
    kw = dict(key=jax.random.key(0), optimizer=optax.sgd(0.05), num_steps=200)
    model = {"w": jnp.zeros(2)}
    best, hist = tr.train(model, _quadratic, validation=_Validation(), patience=3, **kw)
    assert hist.num_steps_taken < 200
    assert np.all(np.isnan(np.asarray(hist.losses)[hist.num_steps_taken :]))
    vals = np.asarray(hist.validation)
    assert float(_Validation()(best)) == pytest.approx(np.nanmin(vals), rel=1e-6)


def test_train_loop_runs_inside_jit():
    @jax.jit
    def run(c):
        def loss(m, b, *, key):
            return jnp.sum((m - c) ** 2)

        out, hist = tr.train_loop(
            jnp.zeros(2), loss, key=jax.random.key(0), optimizer=optax.sgd(0.2), num_steps=40
        )
        return out, hist.num_nonfinite

    out, bad = run(jnp.array([3.0, -1.0]))
    np.testing.assert_allclose(out, [3.0, -1.0], atol=1e-4)
    assert int(bad) == 0


def test_bad_input():
    m = {"w": jnp.zeros(2)}
    with pytest.raises(TypeError, match="optimizer"):
        tr.train(m, _quadratic, key=jax.random.key(0), optimizer="adam", num_steps=3)
    with pytest.raises(ValueError, match="num_steps"):
        tr.train(m, _quadratic, key=jax.random.key(0), optimizer=optax.sgd(0.1), num_steps=0)
    with pytest.raises(ValueError, match="ema_decay"):
        tr.train(
            m, _quadratic, key=jax.random.key(0), optimizer=optax.sgd(0.1), num_steps=3, ema_decay=1
        )
    with pytest.raises(ValueError, match="batch_size"):
        tr.Minibatches(jnp.zeros((4, 2)), 5)
    with pytest.raises(ValueError, match="patience"):
        tr.train(
            m, _quadratic, key=jax.random.key(0), optimizer=optax.sgd(0.1), num_steps=3, patience=2
        )
    with pytest.raises(ValueError, match="batch_size"):
        tr.train(
            m,
            _quadratic,
            jnp.zeros(3),
            key=jax.random.key(0),
            optimizer=optax.sgd(0.1),
            num_steps=3,
        )
