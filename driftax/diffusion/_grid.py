"""Time grids from `t_noise` to `t_data`: uniform in t, uniform in log-SNR, Karras rho, quadratic."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Literal

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._checks import check_int, check_sequence
from .._custom_types import Array
from ._path import AbstractPath

if TYPE_CHECKING:
    from ._interpolant import StochasticInterpolant

Schedule = Literal["uniform", "log_snr", "karras", "quadratic"]
SCHEDULES: tuple[str, ...] = ("uniform", "log_snr", "karras", "quadratic")


def _check_num_steps(num_steps) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise TypeError(f"`num_steps` must be an int, got {num_steps!r}.")
    return check_int(num_steps, "num_steps")


def _grid_impl(path: AbstractPath, num_steps: int, schedule: str, rho: float, dtype=None) -> Array:
    dtype = jnp.result_type(float) if dtype is None else dtype
    t_noise = jnp.asarray(path.t_noise, dtype)
    t_data = jnp.asarray(path.t_data, dtype)
    u = jnp.linspace(0.0, 1.0, num_steps + 1, dtype=dtype)  # 0 at the noise end, 1 at data
    if schedule == "uniform":
        ts = t_noise + u * (t_data - t_noise)
    elif schedule == "quadratic":
        ts = t_data + (t_noise - t_data) * (1.0 - u) ** 2
    elif schedule == "log_snr":
        lam0, lam1 = path.half_log_snr(t_noise), path.half_log_snr(t_data)
        ts = path.t_from_half_log_snr(lam0 + u * (lam1 - lam0))
    else:  # karras: rho-spaced in the VE-equivalent noise level sigma/alpha = exp(-lambda)
        s_max = jnp.exp(-path.half_log_snr(t_noise))
        s_min = jnp.exp(-path.half_log_snr(t_data))
        s = (s_max ** (1.0 / rho) + u * (s_min ** (1.0 / rho) - s_max ** (1.0 / rho))) ** rho
        ts = path.t_from_half_log_snr(-jnp.log(s))
    return ts.at[0].set(t_noise).at[-1].set(t_data)


_grid = eqx.filter_jit(_grid_impl)


def _log_snr_ends(path: AbstractPath) -> tuple[float, float]:
    lams = np.asarray(path.half_log_snr(jnp.asarray([path.t_noise, path.t_data], jnp.float32)))
    return float(lams[0]), float(lams[1])


_log_snr_ends_cached = functools.lru_cache(maxsize=64)(_log_snr_ends)


def check_log_snr_ends(path: AbstractPath, schedule: str) -> None:
    """Raise unless the half log-SNR is finite at both ends (needed by log-SNR/Karras grids)."""
    try:
        lam0, lam1 = _log_snr_ends_cached(path)
    except TypeError:  # unhashable path
        lam0, lam1 = _log_snr_ends(path)
    if not (np.isfinite(lam0) and np.isfinite(lam1)):
        raise ValueError(
            f"schedule={schedule!r} needs a finite log-SNR at both ends of the path, but "
            f"lambda(t_noise={path.t_noise}) = {lam0}, lambda(t_data={path.t_data}) = "
            f"{lam1}; move `t_noise`/`t_data` inside the domain or use schedule='uniform'."
        )


def time_grid(
    path: AbstractPath,
    num_steps: int,
    schedule: Schedule = "log_snr",
    *,
    rho: float = 7.0,
) -> Array:
    """A grid of `num_steps + 1` times from `path.t_noise` to `path.t_data`.

    **Arguments:**

    - `path`: the probability path.
    - `num_steps`: number of intervals.
    - `schedule`: `"uniform"` (uniform in t), `"log_snr"` (uniform in the half log-SNR
      `lambda = log(alpha/sigma)`, the DPM-Solver choice), `"karras"` (the EDM schedule: uniform
      in `(sigma/alpha)^(1/rho)`), or `"quadratic"` (uniform in `sqrt(t - t_data)`, dense near
      the data).
    - `rho`: exponent of the Karras schedule.

    **Returns:** the times, shape `(num_steps + 1,)`, strictly monotone from noise to data.
    """
    if not isinstance(path, AbstractPath):
        raise TypeError(
            f"`path` must be a driftax.diffusion AbstractPath, got {type(path).__name__}."
        )
    num_steps = _check_num_steps(num_steps)
    if schedule not in SCHEDULES:
        raise ValueError(f"`schedule` must be one of {SCHEDULES}, got {schedule!r}.")
    if not (isinstance(rho, (int, float)) and rho > 0):
        raise ValueError(f"`rho` must be a positive number, got {rho!r}.")
    if schedule in ("log_snr", "karras"):
        check_log_snr_ends(path, schedule)
    return _grid(path, num_steps, schedule, float(rho))


def check_grid(path: AbstractPath | StochasticInterpolant, ts, *, name: str = "ts") -> np.ndarray:
    """Eagerly check a user time grid: 1-D, at least 2 finite times, strictly monotone from the
    noise end towards the data end, inside the path's domain. Returns it as a NumPy array."""
    arr = check_sequence(ts, name, "times")
    direction = np.sign(path.t_data - path.t_noise)
    diffs = np.diff(arr) * direction
    if not np.all(diffs > 0):
        way = "decreasing" if direction < 0 else "increasing"
        raise ValueError(
            f"`{name}` must be strictly {way} (from t_noise={path.t_noise} towards "
            f"t_data={path.t_data}); it is not monotone."
        )
    lo, hi = path.domain
    if arr.min() < lo or arr.max() > hi:
        raise ValueError(
            f"`{name}` leaves the path's domain [{lo}, {hi}]: range [{arr.min()}, {arr.max()}]."
        )
    return arr
