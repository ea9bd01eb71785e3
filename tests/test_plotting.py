"""`driftax.plotting` never touches the global matplotlib state: no backend switch, no pyplot
figures; every function returns a `Figure`, and figures save headless."""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax.energies as de

matplotlib = pytest.importorskip("matplotlib")


def _calls(plotting, tmp_path):
    target = de.gaussian(jnp.zeros(2))
    samples = target.sample(jax.random.key(0), 200)
    figs = [
        plotting.plot_density_2d(target, samples, resolution=20, title="g"),
        plotting.plot_density_2d(target, resolution=20, filled=False),
        plotting.plot_histograms({"a": np.arange(10.0), "b": np.ones(5)}, xlabel="e"),
        plotting.plot_histograms([np.arange(10.0)], title="t"),
        plotting.subplots(1, 2, figsize=(4, 2))[0],
    ]
    fig, (a, b) = plotting.subplots(1, 2)
    figs.append(plotting.plot_density_2d(target, ax=a, resolution=20))
    figs.append(plotting.plot_histograms({"x": np.arange(5.0)}, ax=b))
    assert figs[-1] is fig and figs[-2] is fig
    path = plotting.save_figure(fig, tmp_path / "sub" / "fig.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return figs


def test_plotting_leaves_global_state_alone(tmp_path):
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    from driftax import plotting

    backend, fignums = matplotlib.get_backend(), plt.get_fignums()
    figs = _calls(plotting, tmp_path)
    assert all(isinstance(f, Figure) for f in figs)
    assert matplotlib.get_backend() == backend
    assert plt.get_fignums() == fignums


def test_plotting_never_imports_pyplot(tmp_path):
    """In a fresh interpreter: the whole module runs and saves without importing pyplot (which is
    what selects a backend), and leaves the configured backend as it was."""
    code = f"""
import sys, pathlib, matplotlib
matplotlib.use("svg")  # the user's choice, before driftax
from driftax import plotting
import tests.test_plotting as t
figs = t._calls(plotting, pathlib.Path({str(tmp_path)!r}))
assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
print(len(figs))
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[1],
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "7"


def test_user_pyplot_figure_with_ax(tmp_path):
    """Drawing into a user's pyplot axes keeps working; save_figure closes that pyplot figure."""
    import matplotlib.pyplot as plt

    from driftax import plotting

    fig, ax = plt.subplots()
    try:
        assert plotting.plot_histograms({"x": np.arange(5.0)}, ax=ax) is fig
        assert fig.number in plt.get_fignums()
        plotting.save_figure(fig, tmp_path / "user.png")
        assert fig.number not in plt.get_fignums()
    finally:
        plt.close(fig)


def test_bad_input():
    from driftax import plotting

    with pytest.raises(ValueError, match="`energy` must be 2-D"):
        plotting.plot_density_2d(de.gaussian(jnp.zeros(3)))
    with pytest.raises(ValueError, match="no finite numbers"):
        plotting.plot_histograms({"x": [np.nan]})
    with pytest.raises(TypeError, match="`ax` must be a matplotlib Axes"):
        plotting.plot_histograms({"x": [1.0]}, ax=3)
    with pytest.raises(TypeError, match="`fig` must be a matplotlib Figure"):
        plotting.save_figure("not a figure", "x.png")
