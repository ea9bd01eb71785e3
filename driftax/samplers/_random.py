"""Randomness for the kernels' inner loops, with as few PRNG calls as possible.

On CPU every `jax.random` call lowers to a small loop (threefry's rounds), which costs more than
the arithmetic of a cheap target's gradient. So a transition draws ALL its Gaussian and uniform
variates from ONE `jax.random.bits` call (`draws`); loops that need a fresh uniform at each
iteration (NUTS leaves) hash a per-transition seed with a counter (`hash_uniforms`); and the
driver derives each chain's per-step key by hashing the key's data (`chain_keys`). Everything
stays a pure function of the user's key.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .._custom_types import Array, Key


def mix32(h: Array) -> Array:
    """MurmurHash3's 32-bit finalizer: a bijective avalanche mix of `uint32` words."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _uniform_open(bits: Array, dtype) -> Array:
    """Uniforms in the open interval (0, 1) from unsigned integers (all mantissa bits used)."""
    nbits = jnp.iinfo(bits.dtype).bits
    mant = jnp.finfo(dtype).nmant + 1
    return ((bits >> (nbits - mant)).astype(dtype) + 0.5) * (2.0**-mant)


def draws(key: Key, normal_shape, num_uniforms: int, dtype) -> tuple[Array, Array]:
    """`(normals of normal_shape, uniforms of shape (num_uniforms,))` from ONE PRNG call."""
    size = math.prod(normal_shape)
    wide = jnp.finfo(dtype).bits > 32
    bits = jax.random.bits(key, (size + num_uniforms,), jnp.uint64 if wide else jnp.uint32)
    u = _uniform_open(bits, dtype)
    normals = jax.scipy.special.ndtri(u[:size]).reshape(normal_shape)
    return normals, u[size:]


def hash_uniforms(seed: Array, counter: Array, num: int, dtype) -> Array:
    """`num` uniforms in (0, 1) for iteration `counter` of a loop, from a `uint32[2]` seed."""
    c = counter.astype(jnp.uint32) * jnp.uint32(num) + jnp.arange(num, dtype=jnp.uint32)
    h = mix32(mix32(c ^ seed[0]) + seed[1])
    return ((h >> 8).astype(dtype) + 0.5) * (1.0 / (1 << 24))


def chain_keys(key: Key, step: Array, num_chains: int) -> Key:
    """Independent keys for `num_chains` chains at driver step `step` (a counter hash of the
    key's data: no PRNG call)."""
    data = jax.random.key_data(key)
    shape = data.shape
    words = data.reshape(-1).astype(jnp.uint32)
    chain = jnp.arange(num_chains, dtype=jnp.uint32)[:, None]
    idx = jnp.arange(words.shape[0], dtype=jnp.uint32)[None, :]
    s = step.astype(jnp.uint32)
    h = mix32(words[None, :] ^ mix32(s * jnp.uint32(0x9E3779B9) + idx))
    h = mix32(h + chain * jnp.uint32(0x85EBCA6B) + jnp.uint32(0x632BE5AB))
    return jax.random.wrap_key_data(
        h.reshape(num_chains, *shape).astype(data.dtype), impl=jax.random.key_impl(key)
    )
