"""Randomness for the kernels' inner loops, cheap on every backend.

On CPU every `jax.random` call lowers to a small *rolled* loop over threefry's rounds (with copies
of its state at every round), which costs more than the arithmetic of a cheap target's gradient.
So the kernels draw ALL the Gaussian and uniform variates of a transition at once from the
Threefry-2x32 block cipher (Salmon et al. 2011) written out as straight-line elementwise
operations, which XLA fuses into one kernel (`draws`); loops that need fresh uniforms at each
iteration (NUTS leaves) encrypt a counter (`hash_uniforms`); and the driver derives each chain's
per-step key by hashing the key's data (`chain_keys`). Everything stays a pure function of the
user's key; keys of other PRNG implementations fall back to `jax.random.bits`.
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


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _rotl(x, r: int):
    return (x << jnp.uint32(r)) | (x >> jnp.uint32(32 - r))


def threefry2x32(k0: Array, k1: Array, x0: Array, x1: Array) -> tuple[Array, Array]:
    """The Threefry-2x32 block cipher (20 rounds) of the `uint32` counter pair `(x0, x1)` under
    the key `(k0, k1)`, as straight-line elementwise operations (bit-identical to JAX's)."""
    ks = (k0, k1, k0 ^ k1 ^ jnp.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = _rotl(x1, r) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
    return x0, x1


def _is_threefry(key) -> bool:
    impl = jax.random.key_impl(key)
    return getattr(impl, "name", impl) == "threefry2x32"


def random_words(key: Key, n: int) -> Array:
    """`n` random `uint32` words from a key (Threefry in counter mode for threefry keys)."""
    if not _is_threefry(key):
        return jax.random.bits(key, (n,), jnp.uint32)
    kd = jax.random.key_data(key).astype(jnp.uint32)
    half = (n + 1) // 2
    c = jnp.arange(half, dtype=jnp.uint32)
    y0, y1 = threefry2x32(kd[0], kd[1], c, jnp.full_like(c, 0x5EED))
    return jnp.concatenate([y0, y1])[:n]


def _uniform_open(words: Array, dtype) -> Array:
    """Uniforms strictly inside (0, 1): `(k + 1/2) / 2ⁿ` for n = 23 random bits per float32,
    52 per float64 (two words), so that the largest value, 1 - 2⁻ⁿ⁻¹, is representable and
    never rounds to 1 (where the inverse normal CDF is infinite)."""
    if jnp.finfo(dtype).bits > 32:
        hi = (words[0::2] >> 6).astype(dtype)  # 26 bits
        lo = (words[1::2] >> 6).astype(dtype)  # 26 bits
        return (hi * 2.0**26 + lo + 0.5) * 2.0**-52
    return ((words >> 9).astype(dtype) + 0.5) * 2.0**-23


def draws(key: Key, normal_shape, num_uniforms: int, dtype) -> tuple[Array, Array]:
    """`(normals of normal_shape, uniforms of shape (num_uniforms,))` from one key, in one
    fused computation."""
    size = math.prod(normal_shape)
    per = 2 if jnp.finfo(dtype).bits > 32 else 1
    u = _uniform_open(random_words(key, per * (size + num_uniforms)), dtype)
    normals = jax.scipy.special.ndtri(u[:size]).reshape(normal_shape)
    # materialize once: without the barrier XLA may fuse (recompute) the whole cipher into
    # every consumer of the noise
    return jax.lax.optimization_barrier((normals, u[size:]))


def hash_uniforms(seed: Array, counter: Array, num: int, dtype) -> Array:
    """`num` uniforms in (0, 1) for iteration `counter` of a loop, from a `uint32[2]` seed."""
    c = jnp.arange(num, dtype=jnp.uint32)
    h, _ = threefry2x32(seed[0], seed[1], c, jnp.broadcast_to(counter.astype(jnp.uint32), c.shape))
    return ((h >> 9).astype(dtype) + 0.5) * 2.0**-23


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
