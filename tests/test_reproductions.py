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


# name -> (a phrase of the failing claim, reason): claims that do not hold in the quick profile
# (kept honest in the report). Every OTHER claim of these scripts must still pass.
KNOWN_FAILURES: dict[str, tuple[str, str]] = {
    "diffusion_samplers": (
        "reweighted (IS) log Z error",
        "quick profile (K=32, 300 reverse-KL iterations): CMCD beats uncontrolled MCD in the ELBO "
        "on gmm25, funnel and many_well(32), but not in the importance-sampling log Z on gmm25 "
        "and funnel (where broad uncontrolled weights are already near exact)",
    ),
    "flow_hmc_u1": (
        "tunnels between topological sectors",
        "quick profile (gauge flow trained 300 steps, KL ~45 nats): neither HMC nor flowed HMC "
        "changes Q at beta = 6 in 4x1000 draws, so the >= 2x tunnelling claim fails",
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
    phrase, reason = KNOWN_FAILURES.get(name, (None, ""))
    failed = [r for r in report.rows if not r.passed]
    unexpected = [r for r in failed if phrase is None or phrase not in r.claim]
    assert not unexpected, f"{name}: failed claims {unexpected}"
    if failed:
        pytest.xfail(reason)
