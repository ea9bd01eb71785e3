"""The vectorized health-check diagnostics agree with ArviZ's definitions."""

import numpy as np
import pytest

from driftax.samplers import _diagnostics as diag


def _ar1(rng, phi, shape):
    c, n, k = shape
    x = np.zeros(shape)
    e = rng.standard_normal(shape)
    for t in range(1, n):
        x[:, t] = phi * x[:, t - 1] + e[:, t]
    return x


@pytest.mark.parametrize(
    "phi, shape, shift",
    [(0.0, (4, 400, 5), 0.0), (0.9, (4, 400, 5), 0.0), (0.95, (3, 301, 4), 0.5)],
)
def test_fast_ess_rhat_matches_arviz(phi, shape, shift):
    rng = np.random.default_rng(0)
    x = _ar1(rng, phi, shape)
    x[0] += shift  # one chain off: R-hat well above 1
    ess, rhat = diag.fast_ess_rhat(x)
    np.testing.assert_allclose(rhat, diag.rhat(x), rtol=1e-12)
    # the Geyer truncation's last pair differs from ArviZ's loop: a few percent at most
    np.testing.assert_allclose(ess, diag.ess(x, "bulk"), rtol=0.03)


def test_fast_ess_rhat_ties_and_constant_coordinates():
    rng = np.random.default_rng(1)
    x = np.round(rng.standard_normal((4, 200, 3)), 1)  # many ties (as rejected MH steps)
    ess, rhat = diag.fast_ess_rhat(x)
    np.testing.assert_allclose(rhat, diag.rhat(x), rtol=1e-12)
    np.testing.assert_allclose(ess, diag.ess(x, "bulk"), rtol=0.03)
    x[..., 0] = 1.0  # a frozen coordinate: R-hat undefined
    ess, rhat = diag.fast_ess_rhat(x)
    assert np.isnan(rhat[0]) and np.all(np.isfinite(rhat[1:]))
    with pytest.raises(ValueError, match="4 draws"):
        diag.fast_ess_rhat(x[:, :3])


def test_arviz_import_warning_stays_out_of_the_users_run(tmp_path):
    """ArviZ >= 0.22 warns (FutureWarning) once a day on first import; the diagnostics import it
    without passing that on, so a user's `-W error` run (and this suite) does not fail on the day's
    first R-hat. A fresh cache directory makes the warning fire."""
    import os
    import subprocess
    import sys

    code = "from driftax.samplers._diagnostics import _arviz; _arviz(); print('ok')"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-W", "error::FutureWarning", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"
