"""`driftax.sample` in a multi-process `jax.distributed` run: two local CPU processes with two
devices each (JAX's CPU backend runs the cross-process collectives with gloo, its default) give
the same chains, step sizes and diagnostics as one process with one device and the same key."""

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np

import driftax
from driftax.samplers import _diagnostics as diag

WORKER = textwrap.dedent(
    """
    import sys, warnings
    import jax

    process_id, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    if process_id >= 0:
        # gloo runs the CPU backend's cross-process collectives (the default in jax 0.10; named
        # here so that a change of default cannot turn this into a hang)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id
        )
        assert jax.process_count() == 2 and len(jax.devices()) == 4
    import jax.numpy as jnp, numpy as np
    import driftax as dx, driftax.energies as de, driftax.samplers as ds

    warnings.simplefilter("ignore")  # short chains: the health warnings are expected
    target = de.gaussian(jnp.array([1.0, -1.0]), jnp.array([1.0, 2.0]))
    r = dx.sample(ds.HMC(step_size=0.3, num_integration_steps=4), target, jnp.zeros(2),
                  key=jax.random.key(3), num_steps=40, num_warmup=40, num_chains=8)
    # every process holds every chain, as plain local arrays
    assert r.samples.shape == (8, 40, 2) and r.samples.is_fully_addressable
    assert r.samples.dtype == jnp.float64
    errors = []
    if process_id >= 0:
        try:  # 6 chains over 4 devices: refused before anything runs, on every process
            dx.sample(ds.HMC(step_size=0.3), target, jnp.zeros(2), key=jax.random.key(0),
                      num_steps=4, num_chains=6)
        except ValueError as e:
            errors.append(str(e))
    np.savez(out, samples=np.asarray(r.samples), step_size=np.asarray(r.step_size),
             ess=r.ess, rhat=r.rhat, grads=r.num_grad_evals, acc=r.acceptance_rate,
             errors=np.array(errors))
    print("OK")
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = str(_free_port())
    # float64 so that the adaptation's feedback cannot amplify rounding differences between the
    # one-device and the four-device programs into different accept/reject decisions
    root = os.path.dirname(os.path.dirname(os.path.abspath(driftax.__file__)))
    path = os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])  # this checkout's driftax
    base = dict(os.environ, JAX_PLATFORMS="cpu", JAX_ENABLE_X64="1", PYTHONPATH=path)
    base.pop("XLA_FLAGS", None)
    two = dict(base, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    runs = [
        (["0", port, str(tmp_path / "p0.npz")], two),
        (["1", port, str(tmp_path / "p1.npz")], two),
        (["-1", "0", str(tmp_path / "single.npz")], base),
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args, env in runs
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=600))
    finally:
        for p in procs:  # a failed process leaves its peer waiting in a collective
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0 and "OK" in stdout, stderr[-3000:]

    single = np.load(tmp_path / "single.npz")
    for name in ("p0", "p1"):
        multi = np.load(tmp_path / f"{name}.npz")
        for field in ("samples", "step_size", "acc"):
            np.testing.assert_allclose(multi[field], single[field], rtol=1e-9, atol=1e-9)
        # the diagnostics are those of all 8 chains, computed from the gathered draws...
        np.testing.assert_allclose(multi["rhat"], diag.rhat(multi["samples"]), rtol=1e-12)
        np.testing.assert_allclose(multi["ess"], diag.ess(multi["samples"]), rtol=1e-12)
        # ...and match the single process's. Not to 1e-9: the two programs round differently
        # (the draws agree to ~1e-10 on an AMD EPYC, bit for bit on some CPUs), and rank
        # normalization is discontinuous: two draws of different chains that swap order move
        # R-hat by ~1e-4. Half the chains would move it by far more than 1e-3.
        for field in ("ess", "rhat"):
            np.testing.assert_allclose(multi[field], single[field], rtol=1e-3)
        assert int(multi["grads"]) == int(single["grads"])
        (error,) = multi["errors"]
        assert "`num_chains` (6)" in error and "divisible" in error
