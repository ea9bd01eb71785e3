"""Shared pytest fixtures."""

import jax
import pytest


@pytest.fixture
def x64():
    """Run a test in float64 (exactness checks)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Free every compiled program after each test module.

    A pytest worker that runs hundreds of modules otherwise keeps every XLA executable it ever
    compiled, each holding a few memory maps; late in the suite workers segfaulted inside XLA's
    compiler (the kernel's `vm.max_map_count` is 65,530 by default). Module-scoped fixtures keep
    their compiled functions for their own module, so the no-retrace checks are unaffected."""
    yield
    jax.clear_caches()


@pytest.fixture(scope="session")
def key():
    """A fixed PRNG key."""
    return jax.random.key(0)
