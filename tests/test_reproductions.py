"""Each paper reproduction's quick-profile core check (slow: they train and sample for minutes).

A reproduction script registers here by name; the test imports it and runs `run(tmp, quick=True)`,
asserting every claim row passed. Rows that fail honestly in the report are marked xfail below
with the measured reason.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1] / "benchmarks" / "reproductions"
sys.path.insert(0, str(HERE))


def _names():
    return sorted(p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_"))


# name -> (phrases of the failing claims, reason): claims that do not hold in the quick profile
# (kept honest in the report). Every OTHER claim of these scripts must still pass.
KNOWN_FAILURES: dict[str, tuple[tuple[str, ...], str]] = {
    "closed_form_diffusion": (
        ("novel samples", "k-NN estimator"),
        "quick profile (200 points on the circle, EDM path, seed 0): smoothing 0 memorizes (100% "
        "within 1e-2) and smoothed samples stay on the circle (0.0064), but with a median spacing "
        "of 0.017 the smoothed samples sit between neighbours, under 1e-2 from one (12.7% novel by "
        "that threshold); the k-NN (k = 16) estimator differs from the full sum at high noise, "
        "where all 200 points carry weight (MMD permutation p = 0.010)",
    ),
    "diffusion_samplers": (
        ("reweighted (IS) log Z error",),
        "quick profile (K=32, 300 reverse-KL iterations): CMCD beats uncontrolled MCD in the ELBO "
        "on gmm25, funnel and many_well(32), but not in the importance-sampling log Z on gmm25 "
        "and funnel (where broad uncontrolled weights are already near exact)",
    ),
    "flow_hmc_u1": (
        (
            "tunnels between topological sectors",
            "flow-transformed HMC, beta = 6: mean plaquette",
            "HMC, L = 8, beta = 8: mean plaquette",
        ),
        "quick profile (gauge flow trained 300 steps, KL ~45 nats; 4x1000 draws): neither HMC nor "
        "flowed HMC changes Q at beta = 6, so the >= 2x tunnelling claim fails; and the chains "
        "stay in their topological sectors (R-hat 3.3, bulk ESS ~1 per chain), so the MCSE "
        "understates the plaquette error: flowed HMC at beta = 6 measured z = +3.54, HMC at "
        "beta = 8 z = +4.63 (seed 0)",
    ),
}


def test_registry_nonempty():
    """The framework finds the scripts (fails if the folder moved or is empty)."""
    assert _names(), f"no reproduction scripts in {HERE}"


@pytest.mark.slow
@pytest.mark.parametrize("name", _names())
def test_reproduction_quick(name, tmp_path):
    module = importlib.import_module(name)
    report = module.run(tmp_path, quick=True, seed=0)
    if report.figure is not None:
        assert Path(report.figure).exists()
    phrases, reason = KNOWN_FAILURES.get(name, ((), ""))
    failed = [r for r in report.rows if not r.passed]
    unexpected = [r for r in failed if not any(p in r.claim for p in phrases)]
    assert not unexpected, f"{name}: failed claims {unexpected}"
    if failed:
        pytest.xfail(reason)
