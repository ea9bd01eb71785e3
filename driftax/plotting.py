"""Pictures of targets and samples (matplotlib; install with the `plot` or `dev` extra).

Every function builds `matplotlib.figure.Figure` objects directly (the object-oriented API) and
returns the figure; none of them imports `matplotlib.pyplot`, selects a backend or registers a
figure with pyplot, so your own `plt.show()` and notebook figures work as before. To draw into
a pyplot figure instead, pass `ax=` (e.g. from `plt.subplots()`); a returned `Figure` shows
inline in a notebook when it is the cell's value, and [`save_figure`][] writes it to a file
without any display.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .energies import AbstractEnergy


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("driftax.plotting needs matplotlib: pip install 'driftax[plot]'.") from e
    return Figure


def subplots(nrows: int = 1, ncols: int = 1, *, figsize=None, squeeze: bool = True, **kwargs):
    """A new `Figure` and its grid of axes, like `plt.subplots` but outside pyplot (no backend,
    no global figure list). Extra keyword arguments go to `Figure.subplots` (e.g. `sharey`).

    **Returns:** `(figure, axes)`.
    """
    fig = _figure_class()(figsize=figsize)
    axes = fig.subplots(nrows, ncols, squeeze=squeeze, **kwargs)
    return fig, axes


def _axes(ax, figsize):
    if ax is None:
        return subplots(figsize=figsize)
    if not hasattr(ax, "figure"):
        raise TypeError(f"`ax` must be a matplotlib Axes or None, got {type(ax).__name__}.")
    return ax.figure, ax


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
    `samples` (shape `(n, 2)`) are scattered up to `max_points`. Draws into `ax` when given,
    else into a new 4 × 4 inch figure.

    **Returns:** the `Figure` drawn into (`ax.figure` when `ax` is given).
    """
    fig, ax = _axes(ax, (4, 4))
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
    return fig


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

    `values` maps a label to an array (or is a sequence, labelled by position). Draws into `ax`
    when given, else into a new 5 × 3 inch figure.

    **Returns:** the `Figure` drawn into (`ax.figure` when `ax` is given).
    """
    items = values.items() if isinstance(values, Mapping) else enumerate(values)
    arrays = {str(k): np.asarray(v).reshape(-1) for k, v in items}
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays.values()] or [np.zeros(0)])
    if finite.size == 0:
        raise ValueError("`values` contain no finite numbers.")
    fig, ax = _axes(ax, (5, 3))
    edges = np.histogram_bin_edges(finite, bins=bins)
    for label, a in arrays.items():
        ax.hist(a[np.isfinite(a)], bins=edges, density=density, histtype="step", label=label)
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def save_figure(fig, path, *, dpi: int = 110) -> Path:
    """Write `fig` to `path` (format from the suffix; parent folders are created), headless.

    Works for a bare `Figure` (no pyplot, no display needed). A figure that pyplot manages (made
    with `plt.subplots`) is closed afterwards, so that scripts do not accumulate open figures.
    Returns the path.
    """
    if not hasattr(fig, "savefig"):
        raise TypeError(f"`fig` must be a matplotlib Figure, got {type(fig).__name__}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt = sys.modules.get("matplotlib.pyplot")  # never import pyplot here: it picks a backend
    if plt is not None and getattr(fig.canvas, "manager", None) is not None:
        plt.close(fig)  # only pyplot's figures have a manager
    return path
