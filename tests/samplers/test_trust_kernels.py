"""Runs you can trust, kernel side: non-finite energies (NaN, +inf and -inf log densities) are
divergent and never entered, by every kernel; the position's dtype decides (float32 or float64,
x64 on or off); adaptation arguments and hyperparameters are checked eagerly; the capability
bases drive the default adaptation.

Sized by compiled programs (a run's CPU is nearly all XLA compilation): the three bad values are
an array leaf of the target, so one compiled loop per (kernel, dtype mode) meets all three,
and one `dx.sample` run per (kernel, mode) checks the hole, the dtype and the per-step `Info`."""

import contextlib
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax as dx
import driftax.energies as de
import driftax.samplers as ds
from driftax.samplers._adaptation import (
    dual_averaging_init,
    dual_averaging_update,
    window_schedule,
)

from .registry import ALL_SAMPLERS, SAMPLERS

HOLE = 1.5
BAD_VALUES = (np.nan, np.inf, -np.inf)
# single-proposal kernels: a divergent step reports acceptance exactly 0
_SINGLE_PROPOSAL = set(SAMPLERS) - {"NUTS"}


class HoleGaussian(de.AbstractEnergy):
    """A standard Gaussian whose log density is `bad` (NaN, +inf or -inf) where x[0] > 1.5.

    `bad` is an array leaf, so the three bad values share one compiled loop. The score stays
    finite in the hole (the gradient of `where`): only the log density tells."""

    bad: jax.Array
    event_shape: tuple = eqx.field(static=True)

    def __init__(self, bad):
        self.bad = bad
        self.event_shape = (2,)

    def log_density(self, x):
        logp = -0.5 * jnp.sum(x**2)
        return jnp.where(x[0] > HOLE, self.bad.astype(logp.dtype), logp)


def _floating_dtypes(tree):
    return {
        jnp.dtype(a.dtype)
        for a in jax.tree.leaves(tree)
        if eqx.is_array(a) and jnp.issubdtype(a.dtype, jnp.floating)
    }


@eqx.filter_jit
def _chains(sampler, energy, x0s, key, num_steps):
    """`num_steps` jitted steps of vmapped chains in a `lax.scan`."""
    states = jax.vmap(lambda x: sampler.init(energy, x))(x0s)

    def body(states, k):
        keys = jax.random.split(k, x0s.shape[0])
        states, info = jax.vmap(lambda s, kk: sampler.step(energy, s, key=kk))(states, keys)
        out = (states.position, info.is_divergent, info.acceptance_rate, info.energy_error)
        return states, out

    return jax.lax.scan(body, states, jax.random.split(key, num_steps))


_MODES = {
    "x64-f32": (True, np.float32, np.float32),
    "x64-f64": (True, np.float64, np.float64),
    "x32-f32": (False, np.float32, np.float32),
    "x32-f64": (False, np.float64, np.float32),  # float64 is float32 without x64
}
# the default suite runs the mode of the crash (float32 under x64) for every kernel;
# the others (float64 under x64 is also the conformance test's mode) run with the slow suite
# every kernel's slow cases run on one xdist worker (`make test-slow` uses --dist loadgroup), so
# the cases that compile to the same program (the three bad values; float32 and float64 inputs
# without x64) reuse one compiled loop instead of compiling it on each worker
_GROUPED_KERNELS = [
    pytest.param(n, marks=pytest.mark.xdist_group(f"kernel-{n}")) for n in sorted(ALL_SAMPLERS)
]


# the mode of each kernel's second `dx.sample` run below (`_sample_hole`), taking turns over the
# sorted names: float64 under x64, or a float64 input cast to float32 without x64
_DRIVER_MODE = {n: ("x64-f64", "x32-f64")[i % 2] for i, n in enumerate(sorted(ALL_SAMPLERS))}


# "x32-f32" is not a case of its own: without x64 a float64 input is cast to float32, so "x32-f64"
# compiles the same program as "x32-f32" and also checks the cast. "x64-f64" runs for the
# composite and data kernels only: the conformance test (test_conformance.py::test_contract) runs
# every kernel of SAMPLERS in float64 under x64 on a NaN region, and the default "x64-f32" case
# here meets all three bad values with every kernel. A slow case whose mode is the kernel's
# `_DRIVER_MODE` is not compiled twice: in "x32-f64" and "x64-f64" the driver casts nothing (the
# kernel's hyperparameters already have the position's dtype), so the `dx.sample` run of
# `test_sample_hole_and_dtype_every_kernel` in that mode runs the kernel's own dtype handling, and
# `_check_sampled_hole` checks this test's per-step properties on its trace (three bad values,
# the state's dtype, the hole never entered, divergent steps with finite energy errors and
# acceptance 0). Only "x64-f32" (the driver casts the float64 hyperparameters to float32 there)
# needs the kernel level for every kernel, and it runs in the default suite
def _kernel_case(name, mode):
    marks = [pytest.mark.xdist_group(f"kernel-{name}")]
    if mode != "x64-f32":
        marks.append(pytest.mark.slow)
    return pytest.param(name, mode, marks=marks, id=f"{mode}-{name}")


def _replaces_kernel_case(name, mode):
    """Whether the `dx.sample` run of `name` in `mode` stands for the kernel-level case."""
    return mode == _DRIVER_MODE[name] and not (mode == "x64-f64" and name in SAMPLERS)


_KERNEL_CASES = [
    _kernel_case(n, m)
    for m in ("x32-f64", "x64-f32", "x64-f64")
    for n in sorted(ALL_SAMPLERS)
    if not (m == "x64-f64" and n in SAMPLERS) and not _replaces_kernel_case(n, m)
]


@pytest.mark.parametrize("name,mode", _KERNEL_CASES)
def test_kernel_hole_and_dtype(name, mode):
    """Every kernel, every dtype: init + jitted steps in a scan on the hole target keep the
    state's dtype, never enter the hole, stay finite, and count each bad proposal divergent
    with a finite energy error (and acceptance 0 for single-proposal kernels)."""
    x64, np_dtype, expected = _MODES[mode]
    with jax.enable_x64(x64):
        sampler = ALL_SAMPLERS[name]()
        # start at the edge of the hole: every kernel tries to enter it within a few steps
        x0s = np.tile(np.array([1.499, 0.0], np_dtype), (8, 1))
        x0s[1] = [0.3, -0.5]
        for bad in BAD_VALUES:
            energy = HoleGaussian(jnp.asarray(np.array(bad, np_dtype)))
            state, (xs, div, acc, err) = _chains(sampler, energy, x0s, jax.random.key(1), 12)
            assert _floating_dtypes(state) == {jnp.dtype(expected)}, (bad, _floating_dtypes(state))
            xs, div, acc, err = map(np.asarray, (xs, div, acc, err))
            assert np.all(np.isfinite(xs)), bad
            assert np.all(xs[..., 0] <= HOLE), bad  # the hole is never entered
            assert div.any(), bad  # and trying to is counted
            assert np.all(np.isfinite(err)) and np.all(np.isfinite(acc)), bad
            assert np.all((acc >= 0) & (acc <= 1)), bad
            if name in _SINGLE_PROPOSAL:
                assert np.all(acc[div] == 0), bad
            assert np.all(np.isfinite(np.asarray(state.log_density)))


def test_nuts_never_accepts_an_infinite_log_density():
    """A leaf with log density +inf (energy -inf) is divergent, not accepted with probability 1:
    on a target that is +inf beyond the hole, NUTS reports divergences and sane acceptance."""
    energy = HoleGaussian(jnp.asarray(jnp.inf))
    x0s = jnp.tile(jnp.array([1.4, 0.0]), (4, 1))
    _, (xs, div, acc, _) = _chains(ds.NUTS(step_size=0.5), energy, x0s, jax.random.key(0), 30)
    assert np.all(np.asarray(xs)[..., 0] <= HOLE)
    assert np.asarray(div).mean() > 0.05
    assert np.all(np.asarray(acc) < 1.0 + 1e-6)


@contextlib.contextmanager
def _quiet_health_checks():
    """Short test runs are too short for the driver's ESS / R-hat health checks; the hole test
    is about kernels, so those warnings are not its subject."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dx.SamplingWarning)
        yield


def _sample_hole(name, mode, bads):
    """`dx.sample` (default adaptation) of one kernel on the hole target in one dtype mode, once
    per bad value in `bads`: `bad` is an array leaf of the energy, so the runs share one compiled
    loop (the driver reuses it for a second call with the same shapes and settings)."""
    x64, np_dtype, _ = _MODES[mode]
    results = []
    with jax.enable_x64(x64), _quiet_health_checks():
        for bad in bads:
            energy = HoleGaussian(jnp.asarray(np.array(bad, np_dtype)))
            r = dx.sample(
                ALL_SAMPLERS[name](),
                energy,
                np.array([1.0, 0.0], np_dtype),
                key=jax.random.key(3),
                num_steps=150,
                num_warmup=150,
                num_chains=2,
            )
            results.append((bad, r))
    return results


def _check_sampled_hole(name, mode, results):
    """The driver's side of the issue, checked on every run of `_sample_hole`: the state keeps
    the energy's dtype (float32 `x0` and energy under x64 stay float32: the issue's crash;
    float64 stays float64 under x64 and is float32 without), samples are finite, the hole is
    never entered, divergences are counted, the chains are not frozen and the adapted step size
    neither collapsed nor exploded; and on the per-step `Info` of the sampling steps the
    properties `test_kernel_hole_and_dtype` checks at the kernel level."""
    expected = jnp.dtype(_MODES[mode][2])
    for bad, r in results:
        assert _floating_dtypes(r.final_state) == {expected}, (bad, _floating_dtypes(r.final_state))
        assert np.all(np.isfinite(np.asarray(r.final_state.log_density))), bad
        xs = np.asarray(r.samples)
        assert np.all(np.isfinite(xs)), bad
        assert np.all(xs[..., 0] <= HOLE), bad
        assert r.num_divergent + r.num_divergent_warmup > 0, bad
        # the per-step `Info` of the sampling steps, as at the kernel level: finite energy
        # errors, and bad proposals (counted divergent) rejected
        div, acc, err = (np.asarray(a) for a in (r.info.is_divergent, r.info.acceptance_rate,
                                                 r.info.energy_error))  # fmt: skip
        if _replaces_kernel_case(name, mode):  # bad proposals are met after warmup too
            assert div.any(), bad
        assert np.all(np.isfinite(err)) and np.all(np.isfinite(acc)), bad
        assert np.all((acc >= 0) & (acc <= 1)), bad
        if name in _SINGLE_PROPOSAL:
            assert np.all(acc[div] == 0), bad
        # the chains are not frozen (the failure: a collapsed step size, 100 % acceptance)
        assert np.all(np.std(xs[..., 0], axis=1) > 0.2), (bad, np.std(xs[..., 0], axis=1))
        if isinstance(r.sampler, ds.AbstractStepSizeSampler):
            # dual averaging neither collapsed nor exploded (the unit Gaussian needs ~0.1-1)
            h = np.asarray(r.sampler.step_size)
            assert np.all((h > 1e-2) & (h < 50.0)), (bad, h)


# the default suite: the mode (float32 `x0` and energy under x64) through `dx.sample`
# with the default adaptation, on the hole target with all three bad values (one compiled loop
# per kernel), for the kernels of the issue: NUTS, an unadjusted Langevin kernel of each family
# (they froze) and one kernel of each other adaptation (diagonal window, ChEES, tempering)
_SAMPLE_DEFAULT = ("NUTS", "BAOAB", "RMP-kinetic", "ULA", "UBU", "ChEESHMC", "PT-MALA")


@pytest.mark.parametrize("name", _SAMPLE_DEFAULT)
def test_sample_hole_with_adaptation(name):
    """Through `dx.sample` with the default adaptation, float32 under x64, NaN / +inf / -inf:
    the dtype is kept, samples are finite, the hole is never entered, divergences are counted,
    acceptance is not pinned at 1, the step size neither collapsed nor exploded."""
    _check_sampled_hole(name, "x64-f32", _sample_hole(name, "x64-f32", BAD_VALUES))


# the slow suite: every kernel through `dx.sample` in the mode (float32 under x64) and in
# its `_DRIVER_MODE` (float64 under x64, or a float64 input cast to float32 without x64, which
# compiles the same program as float32 without x64), each run on the hole target with all three
# bad values (one compiled loop per kernel and mode). The kernels' own dtype handling in every
# mode is checked at the kernel level above (by these runs' traces where `_replaces_kernel_case`),
# and the driver's casts do not depend on the kernel. One run per (kernel, mode) checks what a hole
# run (one bad value), a dtype run on a plain Gaussian and a kernel-level case checked before
_SAMPLE_ROTATION = [
    pytest.param(n, m, marks=pytest.mark.xdist_group(f"kernel-{n}"), id=f"{m}-{n}")
    for i, n in enumerate(sorted(ALL_SAMPLERS))
    for m in ("x64-f32", _DRIVER_MODE[n])
    if (n, m) not in {(k, "x64-f32") for k in _SAMPLE_DEFAULT}  # in the default suite
]


@pytest.mark.slow
@pytest.mark.parametrize("name,mode", _SAMPLE_ROTATION)
def test_sample_hole_and_dtype_every_kernel(name, mode):
    """Every kernel, the checks of `test_sample_hole_with_adaptation` in its dtype modes."""
    _check_sampled_hole(name, mode, _sample_hole(name, mode, BAD_VALUES))


# ---------------------------------------------------------------------------------------------
# Dual averaging cannot be driven to silly step sizes
# ---------------------------------------------------------------------------------------------


@jax.jit
def _dual_average(step_size, statistic):
    def body(state, _):
        return dual_averaging_update(state, statistic), None

    state, _ = jax.lax.scan(body, dual_averaging_init(step_size), None, length=3000)
    return jnp.exp(state.log_step), jnp.exp(state.log_step_avg)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, -1.0])
def test_dual_averaging_survives_non_finite_statistics(bad):
    """NaN and infinite statistics, or a chain that accepts everything forever (statistic -1),
    can never produce a zero, infinite or NaN step size."""
    h, h_avg = map(float, _dual_average(jnp.asarray(0.5), jnp.asarray(bad, jnp.float32)))
    assert np.isfinite(h) and h > 0 and np.isfinite(h_avg) and h_avg > 0
    if not bad < 0:  # NaN counts as "shrink"; +inf clips to the largest shrink signal
        assert h < 0.5 and h_avg < 0.5


def test_unadjusted_kernel_bounces_off_a_nan_region():
    """UnderdampedLangevin keeps its position on a divergent step and negates its momentum,
    so it moves away from the bad region instead of pushing into it (and freezing)."""
    energy = HoleGaussian(jnp.asarray(jnp.nan))
    sampler = ds.UnderdampedLangevin(step_size=0.2, friction=0.1)
    state = sampler.init(energy, jnp.array([1.45, 0.0]))
    state = eqx.tree_at(lambda s: s.momentum, state, jnp.array([3.0, 0.0]))
    new, info = jax.jit(lambda s: sampler.step(energy, s, key=jax.random.key(0)))(state)
    assert bool(info.is_divergent) and float(info.acceptance_rate) == 0.0
    np.testing.assert_array_equal(new.position, state.position)
    np.testing.assert_array_equal(new.momentum, -state.momentum)
    assert float(info.energy_error) == ds.MAX_ENERGY_ERROR


# ---------------------------------------------------------------------------------------------
# Eager validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [1.5, -1.0, 0.0, 1.0, np.nan, np.inf])
def test_adaptation_target_must_be_in_the_unit_interval(target):
    with pytest.raises(ValueError, match="`target`"):
        ds.StepSizeAdaptation(target=target)
    with pytest.raises(ValueError, match="`target`"):
        ds.WindowAdaptation(target=target)
    with pytest.raises(ValueError, match="`target`"):
        ds.ChEESAdaptation(target=target)
    with pytest.raises(ValueError, match="`target`"):
        ds.ParallelTemperingAdaptation(target=target)


def test_adaptation_arguments_are_checked():
    with pytest.raises(TypeError, match="`target`"):
        ds.StepSizeAdaptation(target="high")
    with pytest.raises(TypeError, match="`target`"):
        ds.WindowAdaptation(target=True)
    with pytest.raises(TypeError, match="`pooled`"):
        ds.WindowAdaptation(pooled="yes")
    with pytest.raises(ValueError, match="`metric`"):
        ds.WindowAdaptation(metric="full")
    for lr in (0.0, -0.1, np.nan):
        with pytest.raises(ValueError, match="`learning_rate`"):
            ds.ChEESAdaptation(learning_rate=lr)
    with pytest.raises(ValueError, match="`metric`"):
        ds.ChEESAdaptation(metric="dense")
    with pytest.raises(ValueError, match="`ladder_fraction`"):
        ds.ParallelTemperingAdaptation(ladder_fraction=0.0)
    with pytest.raises(ValueError, match="`first_window`"):
        ds.ParallelTemperingAdaptation(first_window=1)
    with pytest.raises(TypeError, match="`adapt_ladder`"):
        ds.ParallelTemperingAdaptation(adapt_ladder="no")
    ds.ParallelTemperingAdaptation(ladder_fraction=1.0, target=0.3)  # fine


def test_dual_averaging_and_windows_check_their_arguments():
    for bad in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="`step_size`"):
            dual_averaging_init(bad)
    with pytest.raises(ValueError, match="`num_warmup`"):
        window_schedule(-1)
    with pytest.raises(TypeError, match="`num_warmup`"):
        window_schedule(10.5)
    with pytest.raises(ValueError, match="`base_window`"):
        window_schedule(100, base_window=0)


def test_window_adaptation_needs_a_step_size():
    pt = ds.ParallelTempering(ds.MALA(step_size=0.3), num_replicas=2, max_temperature=2.0)
    with pytest.raises(TypeError, match="AbstractStepSizeSampler"):
        ds.WindowAdaptation().prepare(pt, (2,))
    with pytest.raises(TypeError, match="step size"):
        ds.StepSizeAdaptation().prepare(pt, (2,))
    # a sampler whose step size was set to garbage after construction is caught before compiling
    bad = eqx.tree_at(lambda s: s.step_size, ds.MALA(step_size=0.3), jnp.asarray(-1.0))
    with pytest.raises(ValueError, match="`step_size`"):
        ds.WindowAdaptation().prepare(bad, (2,))


@pytest.mark.parametrize(
    "build,match,exc",
    [
        (
            lambda: ds.HMC(step_size=0.1, num_integration_steps=0),
            "num_integration_steps",
            ValueError,
        ),
        (
            lambda: ds.HMC(step_size=0.1, num_integration_steps=True),
            "num_integration_steps",
            TypeError,
        ),
        (
            lambda: ds.HMC(step_size=0.1, num_integration_steps=2.5),
            "num_integration_steps",
            TypeError,
        ),
        (lambda: ds.HMC(step_size=0.1, jitter_step_size=1.0), "jitter_step_size", ValueError),
        (lambda: ds.HMC(step_size=0.1, jitter_num_steps=1), "jitter_num_steps", TypeError),
        (lambda: ds.NUTS(max_tree_depth=0), "max_tree_depth", ValueError),
        (lambda: ds.NUTS(max_tree_depth=31), "max_tree_depth", ValueError),
        (lambda: ds.NUTS(max_tree_depth=True), "max_tree_depth", TypeError),
        (lambda: ds.NUTS(max_energy_error=-1.0), "max_energy_error", ValueError),
        (lambda: ds.NUTS(jitter_step_size=-0.1), "jitter_step_size", ValueError),
        (lambda: ds.NUTS(jitter_step_size=True), "jitter_step_size", TypeError),
        (lambda: ds.ChEESHMC(step_size=0.1, max_num_steps=0), "max_num_steps", ValueError),
        (
            lambda: ds.ChEESHMC(step_size=0.1, trajectory_length=0.0),
            "trajectory_length",
            ValueError,
        ),
        (lambda: ds.UnderdampedLangevin(step_size=0.1, friction=0.0), "friction", ValueError),
        (lambda: ds.UnderdampedLangevin(step_size=0.1, friction=np.nan), "friction", ValueError),
        (lambda: ds.RandomizedMidpoint(step_size=0.1, friction=-1.0), "friction", ValueError),
        (lambda: ds.RandomizedMidpoint(step_size=0.1, dynamics="x"), "dynamics", ValueError),
        (lambda: ds.MALA(step_size=np.inf), "step_size", ValueError),
        (lambda: ds.MALA(step_size=[0.1, -0.1]), "step_size", ValueError),
    ],
)
def test_sampler_hyperparameters_are_checked(build, match, exc):
    with pytest.raises(exc, match=match):
        build()


# ---------------------------------------------------------------------------------------------
# Capability bases
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL_SAMPLERS))
def test_capability_bases(name):
    """A sampler is an AbstractStepSizeSampler exactly when it has a step size that adaptation
    tunes (and an AbstractMetricSampler exactly when it has a metric); the default adaptation
    follows. Stochastic-gradient kernels have a step size but no Metropolis acceptance to tune it
    against: the user sets it (with a schedule), so they are not AbstractStepSizeSamplers."""
    sampler = ALL_SAMPLERS[name]()
    has_step = "step_size" in {f.name for f in __import__("dataclasses").fields(sampler)}
    has_step = has_step and not isinstance(sampler, ds.AbstractSGMCMC)
    has_metric = "metric" in {f.name for f in __import__("dataclasses").fields(sampler)}
    assert isinstance(sampler, ds.AbstractStepSizeSampler) == has_step
    assert isinstance(sampler, ds.AbstractMetricSampler) == has_metric
    adaptation = ds.default_adaptation(sampler)
    if isinstance(sampler, ds.ChEESHMC):
        assert isinstance(adaptation, ds.ChEESAdaptation)
    elif isinstance(sampler, (ds.MCLMC, ds.MAMS)):  # their own tuning
        assert isinstance(adaptation, (ds.MCLMCAdaptation, ds.MAMSAdaptation))
    elif has_step:
        assert isinstance(adaptation, ds.WindowAdaptation)
        assert (adaptation.metric == "diagonal") == has_metric
    else:
        assert isinstance(adaptation, ds.NoAdaptation)


def test_a_custom_step_size_sampler_gets_step_size_adaptation():
    class Jitter(ds.AbstractStepSizeSampler):
        """A random walk with its own step size and no metric."""

        step_size: jax.Array = eqx.field(converter=jnp.asarray)

        def init(self, energy, x0):
            return ds.MCMCState(position=x0, log_density=energy.log_density(x0), score=None)

        def step(self, energy, state, *, key):
            return ds.RandomWalk(step_size=self.step_size).step(energy, state, key=key)

    adaptation = ds.default_adaptation(Jitter(step_size=0.5))
    assert isinstance(adaptation, ds.WindowAdaptation) and adaptation.metric is None
