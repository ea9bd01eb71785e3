"""Shared pytest fixtures."""

import jax
import pytest


@pytest.fixture
def x64():
    """Run a test in float64 (exactness checks)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="session")
def key():
    """A fixed PRNG key."""
    return jax.random.key(0)
