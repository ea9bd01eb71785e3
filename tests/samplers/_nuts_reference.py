"""Fixed-key NUTS runs whose draws and leaf counts are stored in `data/nuts_reference.npz`, so
that a change to the trajectory builder is checked to leave the trajectories unchanged.

Regenerate (only when the trajectories are MEANT to change):
`python -m tests.samplers._nuts_reference` from the repository root.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import driftax.energies as de
import driftax.samplers as ds

PATH = pathlib.Path(__file__).parent / "data" / "nuts_reference.npz"
NUM_STEPS = 12


def _target():
    cov = np.array(
        [[1.0, 0.8, 0.0, 0.0], [0.8, 1.0, 0.3, 0.0], [0.0, 0.3, 0.5, 0.0], [0, 0, 0, 0.3]]
    )
    return de.gaussian(np.zeros(4), cov)


def _cases():
    gauss = _target()
    diag = ds.DiagonalMetric(jnp.asarray([1.0, 0.9, 0.5, 0.3]))
    return {
        # name: (sampler, target, number of vmapped chains; 0 = one chain, not vmapped)
        "one": (ds.NUTS(step_size=0.3), gauss, 0),
        "vmap1": (ds.NUTS(step_size=0.3), gauss, 1),
        "vmap3": (ds.NUTS(step_size=0.2, metric=diag, jitter_step_size=0.3), gauss, 3),
        # 40 chains × 4 numbers: above `_SELECT_CHAIN_MAX`, one kernel per row
        "deep": (ds.NUTS(step_size=0.05, max_tree_depth=5), gauss, 40),
        "logreg": (ds.NUTS(step_size=0.05), de.logistic_regression(), 2),
    }


def run_case(sampler, target, num_chains):
    """Positions and leaf counts of `NUM_STEPS` transitions from a fixed key."""
    x0 = 0.5 * jnp.ones(target.dim, jnp.float64)

    def chain(key):
        def body(s, k):
            s, info = sampler.step(target, s, key=k)
            return s, (s.position, info.extras["num_integration_steps"])

        return jax.lax.scan(body, sampler.init(target, x0), jax.random.split(key, NUM_STEPS))[1]

    key = jax.random.key(7)
    if num_chains == 0:
        return jax.jit(chain)(key)
    return jax.jit(jax.vmap(chain))(jax.random.split(key, num_chains))


def compute() -> dict[str, np.ndarray]:
    """Every case's draws and leaf counts, in float64 (so that another CPU's rounding cannot
    flip a U-turn or a multinomial choice and change a leaf count)."""
    out = {}
    with jax.enable_x64(True):
        for name, case in _cases().items():
            x, n = run_case(*case)
            out[f"{name}_x"], out[f"{name}_n"] = np.asarray(x), np.asarray(n)
    return out


if __name__ == "__main__":
    np.savez(PATH, **compute())
    print("wrote", PATH)
