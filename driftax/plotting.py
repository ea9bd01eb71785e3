"""Pictures of targets and samples (matplotlib; install with the `plot` or `dev` extra)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .energies import AbstractEnergy


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("driftax.plotting needs matplotlib: pip install 'driftax[plot]'.") from e
    return plt


def density_grid(energy: AbstractEnergy, bounds, resolution: int = 200):
    """Evaluate a 2-D energy's log density on a grid.

    **Arguments:**

    - `energy`: a target with event shape `(2,)`.
    - `bounds`: `((x_min, x_max), (y_min, y_max))`.
    - `resolution`: points per axis.

    **Returns:** `(xs, ys, log_density)` with `log_density[i, j]` at `(xs[j], ys[i])`.
    """
    if tuple(energy.event_shape) != (2,):
        raise ValueError(f"`energy` must be 2-D (event shape (2,)), got {energy.event_shape}.")
    (x0, x1), (y0, y1) = bounds
    xs, ys = np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution)
    grid = jnp.stack(jnp.meshgrid(xs, ys), -1).reshape(-1, 2)
    logp = jax.jit(jax.vmap(energy.log_density))(grid)
    return xs, ys, np.asarray(logp).reshape(resolution, resolution)


def plot_density_2d(
    energy: AbstractEnergy,
    samples=None,
    *,
    bounds=((-5.0, 5.0), (-5.0, 5.0)),
    ax=None,
    resolution: int = 200,
    levels: int = 20,
    max_points: int = 5000,
    title: str | None = None,
    filled: bool = True,
):
    """Draw a 2-D target's density contours with optional samples on top.

    Contours are of the density (not the log density), which shows the mass where it is;
    `samples` (shape `(n, 2)`) are scattered up to `max_points`. Returns the axes.
    """
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    xs, ys, logp = density_grid(energy, bounds, resolution)
    finite = np.isfinite(logp)
    dens = np.where(finite, np.exp(logp - (logp[finite].max() if finite.any() else 0.0)), 0.0)
    if filled:
        ax.contourf(xs, ys, dens, levels=levels, cmap="Blues")
    else:
        ax.contour(xs, ys, dens, levels=levels, cmap="Blues", linewidths=0.7)
    if samples is not None:
        pts = np.asarray(samples).reshape(-1, 2)[:max_points]
        ax.scatter(pts[:, 0], pts[:, 1], s=2, c="tab:red", alpha=0.5, linewidths=0)
    ax.set_xlim(*bounds[0])
    ax.set_ylim(*bounds[1])
    ax.set_aspect("equal")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def plot_histograms(
    values: Mapping[str, Any] | Sequence[Any],
    *,
    ax=None,
    bins: int = 60,
    xlabel: str = "",
    title: str | None = None,
    density: bool = True,
):
    """Overlay histograms of 1-D quantities (e.g. energies or interatomic distances) by label.

    `values` maps a label to an array (or is a sequence, labelled by position). Returns the axes.
    """
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3))
    items = values.items() if isinstance(values, Mapping) else enumerate(values)
    arrays = {str(k): np.asarray(v).reshape(-1) for k, v in items}
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays.values()])
    if finite.size == 0:
        raise ValueError("`values` contain no finite numbers.")
    edges = np.histogram_bin_edges(finite, bins=bins)
    for label, a in arrays.items():
        ax.hist(a[np.isfinite(a)], bins=edges, density=density, histtype="step", label=label)
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def save_figure(fig, path) -> None:
    """Save a figure (creating parent folders) and close it."""
    from pathlib import Path

    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
