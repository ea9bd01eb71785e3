"""Where `driftax.sample` puts its chains: one device, every local device, or every device of a
multi-process `jax.distributed` run (one process per host or GPU, `jax.devices()` global).

The chains axis is split over a 1-d `"chains"` mesh. In a multi-process run every process
executes the same compiled loop (SPMD) on its own block of chains; arrays that enter the loop
are first made global (`to_global` / `replicate`), and the outputs, which live partly on other
processes, are gathered back to every process (`to_local`), so every process holds the same
complete `SampleResult` as a one-process run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def is_multiprocess() -> bool:
    """Whether this is one process of a multi-process `jax.distributed` run."""
    return jax.process_count() > 1


def chain_sharding(num_chains: int, shard: bool | None) -> NamedSharding | None:
    """The sharding of the chains axis over all (global) devices, or `None` for one device.

    `shard=None` shards when more than one device is visible and `num_chains` divides evenly,
    except in a multi-process run, where it always shards (every process must run its share of
    the chains) and an uneven `num_chains` is an error. `shard=False` keeps every chain on this
    process's default device (in a multi-process run each process then runs all the chains by
    itself)."""
    if shard is not None and not isinstance(shard, (bool, np.bool_)):
        raise TypeError(f"`shard` must be None, True or False, got {shard!r}.")
    devices = jax.devices()
    n = len(devices)
    multi = is_multiprocess()
    if shard is None:
        shard = multi or (n > 1 and num_chains % n == 0)
    if not shard:
        return None
    if num_chains % n:
        where = (
            f"the {n} devices of the {jax.process_count()} processes"
            if multi
            else f"the number of devices ({n})"
        )
        raise ValueError(
            f"`num_chains` ({num_chains}) must be divisible by {where} to shard chains; "
            "change num_chains" + ("." if multi else " or pass shard=False.")
        )
    mesh = Mesh(np.array(devices), ("chains",))
    return NamedSharding(mesh, PartitionSpec("chains"))


def _place(a, sharding: NamedSharding):
    """One fully addressable array leaf as a global array of `sharding` (the same value on every
    process is assumed: each process keeps the blocks of its own devices)."""
    if not isinstance(a, jax.Array) or not a.is_fully_addressable:
        return a
    if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
        data = _place(jax.random.key_data(a), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(a))
    host = np.asarray(a)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def to_global(tree, sharding: NamedSharding):
    """Place every array leaf of `tree` (a leading chains axis on each) with `sharding`."""
    if not is_multiprocess():
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda a: _place(a, sharding), tree)


def replicate(tree, sharding: NamedSharding | None):
    """In a multi-process run, every process-local array leaf of `tree` (the energy's and the
    adaptation's parameters, the key) as a global array replicated on every device of
    `sharding`'s mesh; unchanged otherwise (one process: jit moves them itself)."""
    if sharding is None or not is_multiprocess():
        return tree
    replicated = NamedSharding(sharding.mesh, PartitionSpec())
    return jax.tree.map(lambda a: _place(a, replicated), tree)


def _gather(a):
    if not isinstance(a, jax.Array) or a.is_fully_addressable:
        return a
    if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(
            _gather(jax.random.key_data(a)), impl=jax.random.key_impl(a)
        )
    if a.is_fully_replicated:
        return jnp.asarray(np.asarray(a.addressable_data(0)))
    return jnp.asarray(multihost_utils.process_allgather(a, tiled=True))


def to_local(tree):
    """Every global leaf of `tree` gathered into a complete array on this process's default
    device (a collective: every process must call it); process-local leaves unchanged."""
    if not is_multiprocess():
        return tree
    return jax.tree.map(_gather, tree)
