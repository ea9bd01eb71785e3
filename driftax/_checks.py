"""The argument validators of the package, in one place (below energies, samplers, flows and
diffusion). Each raises eagerly a `ValueError` or `TypeError` that names the argument; traced
values pass through the value checks (they are checked where they become concrete)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from ._custom_types import Shape


def check_finite(value, name: str) -> np.ndarray:
    """Eagerly check that a concrete parameter is finite; return it as a NumPy array.

    Raises a `ValueError` naming the parameter otherwise. Traced values are passed through.
    """
    if isinstance(value, jax.core.Tracer):
        return value  # type: ignore[return-value]
    arr = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` must be finite, got {value!r}.")
    return arr


def check_positive(value, name: str, *, strict: bool = True) -> np.ndarray:
    """Eagerly check that a concrete parameter is finite and positive (or non-negative)."""
    arr = check_finite(value, name)
    if isinstance(arr, jax.core.Tracer):
        return arr
    bad = np.any(arr <= 0) if strict else np.any(arr < 0)
    if bad:
        kind = "positive" if strict else "non-negative"
        raise ValueError(f"`{name}` must be {kind}, got {value!r}.")
    return arr


def check_int(value, name: str, minimum: int = 1, *, even: bool = False) -> int:
    """Check a count or size: an int (not a bool) `>= minimum`, and even if asked.

    Raises a `ValueError` naming the argument (also for a non-int, as the older per-module
    checks did).
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
    if even and value % 2:
        raise ValueError(f"`{name}` must be even, got {value!r}.")
    return int(value)


def check_fraction(value, name: str, *, closed_low: bool = False, closed_high: bool = True):
    """Check a number in `(0, 1]` (endpoints per `closed_low` / `closed_high`); traced values
    pass."""
    if isinstance(value, jax.core.Tracer):
        return value
    lo = "[0" if closed_low else "(0"
    hi = "1]" if closed_high else "1)"
    msg = f"`{name}` must be a number in {lo}, {hi}, got {value!r}."
    if isinstance(value, (bool, str)) or value is None or np.ndim(value) != 0:
        raise ValueError(msg)
    v = float(value)
    ok_low = v >= 0 if closed_low else v > 0
    ok_high = v <= 1 if closed_high else v < 1
    if not (ok_low and ok_high):
        raise ValueError(msg)
    return value


def check_choice(value, name: str, choices: tuple[str, ...]) -> str:
    """Check a string option against its `choices`."""
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be a string, one of {choices}, got {value!r}.")
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")
    return value


def check_shape(shape, name: str = "shape", *, minimum: int = 1) -> Shape:
    """Normalise a shape argument (an int or a tuple of ints, each `>= minimum`)."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (int(shape),)
    try:
        shape = tuple(int(s) for s in cast("Iterable[Any]", shape))  # a bool raises below
    except TypeError as e:
        raise TypeError(f"`{name}` must be an int or a tuple of ints, got {shape!r}.") from e
    if any(s < minimum for s in shape):
        kind = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"`{name}` must contain sizes {kind}, got {shape!r}.")
    return shape


def check_sample_shape(shape) -> Shape:
    """Normalise a `sample` shape argument (int or tuple of non-negative ints)."""
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError as e:
        raise TypeError(f"`shape` must be an int or a tuple of ints, got {shape!r}.") from e
    if any(s < 0 for s in shape):
        raise ValueError(f"`shape` must be non-negative, got {shape!r}.")
    return shape


def check_hyper(value, name: str, *, strict: bool = True) -> None:
    """Eagerly check that a concrete hyperparameter is finite and positive (non-negative if not
    `strict`); traced values pass. Raises a `ValueError` naming it (a `TypeError` for a
    non-number)."""
    if isinstance(value, jax.core.Tracer):
        return
    if isinstance(value, (bool, str)) or value is None:
        raise TypeError(f"`{name}` must be a number, got {value!r}.")
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as e:
        raise TypeError(f"`{name}` must be a number, got {value!r}.") from e
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` must be finite, got {value!r}.")
    if np.any(arr <= 0) if strict else np.any(arr < 0):
        raise ValueError(
            f"`{name}` must be {'positive' if strict else 'non-negative'}, got {value!r}."
        )


def check_count(value, name: str) -> int:
    """A positive int (not a bool), else a `ValueError` naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return int(value)


def check_finite_array(x, name: str) -> None:
    """Raise a `ValueError` naming `name` when a concrete array holds NaN or inf (traced arrays
    pass)."""
    if not isinstance(x, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"`{name}` contains non-finite values (NaN or inf).")


def check_sequence(values, name: str, what: str) -> np.ndarray:
    """A 1-D sequence of at least 2 finite numbers (`what` names them in the message, e.g.
    "times"), returned as a float NumPy array; else a `ValueError` naming `name`."""
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1 or arr.shape[0] < 2:
        raise ValueError(
            f"`{name}` must be a 1-D array of at least 2 {what}, got shape {arr.shape}."
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` must be finite, got {arr.tolist()}.")
    return arr
