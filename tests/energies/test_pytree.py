"""Pytree points at the energy boundary: `from_log_density` on dicts / lists / nested pytrees,
ravel ↔ unravel round trips (also under vmap), names by pytree path, dtype, clear errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax.energies as de


def _fn(p):
    return -0.5 * (jnp.sum(p["a"] ** 2) + jnp.sum(p["b"] ** 2))


EXAMPLE = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}


def test_dict_example_is_flat_with_round_trip():
    e = de.from_log_density(_fn, EXAMPLE)
    assert e.event_shape == (7,) and e.dim == 7
    point = {"a": jnp.arange(3.0), "b": jnp.arange(4.0).reshape(2, 2) + 3}
    flat = e.ravel(point)
    np.testing.assert_array_equal(flat, jnp.arange(7.0))
    back = e.unravel(flat)
    assert jax.tree.structure(back) == jax.tree.structure(point)
    for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(point)):
        np.testing.assert_array_equal(x, y)
    # the log density of the flat point is fn of the pytree point
    np.testing.assert_allclose(e.log_density(flat), _fn(point))
    batch = jax.vmap(e.unravel)(jnp.ones((5, 7)))
    assert batch["a"].shape == (5, 3) and batch["b"].shape == (5, 2, 2)


def test_variables_name_leaves_by_path():
    e = de.from_log_density(_fn, EXAMPLE)
    v = e.variables(jnp.arange(7.0))
    assert list(v) == ["a", "b"] and v["b"].shape == (2, 2)
    assert e.variables(jnp.arange(7.0), constrained=False).keys() == v.keys()
    nested = de.from_log_density(
        lambda p: -jnp.sum(p["layer"]["w"] ** 2) - p["w"][0] ** 2 - p["w"][1] ** 2,
        {"layer": {"w": jnp.zeros(2)}, "w": [jnp.zeros(()), jnp.zeros(())]},
    )
    assert nested.layout.names == ("layer.w", "w[0]", "w[1]")
    assert nested.event_shape == (4,)


def test_array_example_keeps_its_shape():
    e = de.from_log_density(lambda x: -jnp.sum(x**2), jnp.zeros((2, 3)))
    assert e.event_shape == (2, 3) and e.layout is None
    assert e.variables(jnp.ones((2, 3)))["x"].shape == (2, 3)
    x = jnp.ones((2, 3))
    assert e.unravel(x) is x


def test_dtype_follows_the_example():
    e = de.from_log_density(_fn, EXAMPLE)
    assert e.dtype == jnp.zeros(()).dtype
    f32 = de.from_log_density(lambda x: -jnp.sum(x**2), np.zeros(2, np.float32))
    assert f32.dtype == jnp.float32
    assert e.ravel({"a": np.zeros(3, np.float32), "b": np.zeros((2, 2))}).dtype == e.dtype


def test_same_structure_gives_equal_hashable_static_parts():
    e1 = de.from_log_density(_fn, EXAMPLE)
    e2 = de.from_log_density(_fn, {"a": jnp.ones(3), "b": jnp.ones((2, 2))})
    assert hash(e1.layout) == hash(e2.layout) and e1.layout == e2.layout
    # two such energies are the same pytree (same leaves, same static parts)
    assert eqx.tree_equal(e1, e2)


@pytest.mark.parametrize(
    "example", [(3,), jnp.zeros(3, jnp.int32), "abc", {}, {"a": jnp.zeros(2), "n": 3}]
)
def test_non_float_pytree_example_is_a_type_error(example):
    with pytest.raises(TypeError, match="`example`"):
        de.from_log_density(lambda x: 0.0 * jnp.sum(x), example)


def test_wrong_point_structure_is_a_clear_error():
    e = de.from_log_density(_fn, EXAMPLE)
    with pytest.raises(ValueError, match="structure"):
        e.ravel({"a": jnp.zeros(3)})
    with pytest.raises(ValueError, match="'b'"):
        e.ravel({"a": jnp.zeros(3), "b": jnp.zeros(4)})


def test_default_dtype_is_canonical():
    # a float64 NumPy field without x64 must not make samplers ask for float64
    g = de.gaussian(np.zeros(2, np.float64))
    assert g.dtype == jnp.zeros(()).dtype
