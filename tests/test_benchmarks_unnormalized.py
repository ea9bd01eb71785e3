"""The unnormalized-density benchmark's helpers (benchmarks/unnormalized.py): the equal-budget
matching of the baselines, and its quick path on one target with a tiny budget (slow: about
35 s of CPU, mostly compiling SMC, MALA and HMC)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import unnormalized as bench  # noqa: E402


@pytest.mark.parametrize(
    ("budget", "per_unit", "fixed"), [(1000, 7, 0), (1234, 8, 50), (10, 64, 0), (999_999, 12, 2000)]
)
def test_units_for_budget_is_nearest(budget, per_unit, fixed):
    u = bench.units_for_budget(budget, per_unit, fixed)
    assert u >= 1
    spent = fixed + u * per_unit
    if budget - fixed >= per_unit:  # the budget affords a move: within half a move of it
        assert abs(spent - budget) <= per_unit / 2
        for other in (u - 1, u + 1):
            if other >= 1:
                assert abs(fixed + other * per_unit - budget) >= abs(spent - budget)


def test_units_for_budget_rejects_a_free_move():
    with pytest.raises(ValueError, match="per_unit"):
        bench.units_for_budget(100, 0)


@pytest.mark.slow
def test_smc_at_budget_matches_within_one_stage():
    t = bench.make_target("gmm40", 10)
    n, moves, budget = 64, 2, 5_000
    r, stages = bench.smc_at_budget(t, jax.random.key(0), budget, num_particles=n, moves=moves)
    counted = int(r.num_energy_evals)
    assert counted == n + stages * n * (moves + 2)  # the count the matching assumes
    assert abs(counted - budget) <= n * (moves + 2)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The quick path on gmm40 with a tiny budget: MALA and HMC at a (given) PIS budget."""
    out = tmp_path_factory.mktemp("unnormalized")
    seed = {"PIS": {"gmm40": {"energy_evals": 4_000, "evals_counted": False}}}
    (out / "unnormalized.json").write_text(json.dumps(seed))
    args = ["--quick", "--targets", "gmm40", "--methods", "MALA @ PIS", "HMC @ PIS"]
    assert bench.main([*args, "--out", str(out), "--merge"]) == 0
    return json.loads((out / "unnormalized.json").read_text()), (out / "unnormalized.md")


@pytest.mark.slow
@pytest.mark.xdist_group("unnormalized_bench")  # one worker compiles the shared run
def test_mcmc_rows_spend_the_budget(quick_run):
    results, _ = quick_run
    chains = 8  # the quick profile's
    for kind, per_step in (("MALA", 1), ("HMC", bench.HMC_LEAPFROG)):
        r = results[f"{kind} @ PIS"]["gmm40"]
        assert "error" not in r, r
        # counted by dx.sample (warmup included), within one move of every chain of the budget
        assert abs(r["energy_evals"] - 4_000) <= chains * per_step / 2
        assert r["evals_counted"] is True
        assert 0 <= r["w2"] < 100 and r["modes_covered"] <= 40
        assert "abs_dlogz" not in r  # MCMC gives no log Z


@pytest.mark.slow
@pytest.mark.xdist_group("unnormalized_bench")
def test_quick_report_has_goals_and_rows(quick_run):
    results, md = quick_run
    text = md.read_text()
    assert "## Goals of issue 18" in text and "| MALA @ PIS |" in text
    assert "Command: `python benchmarks/unnormalized.py" in text
    assert results["_meta"]["profile"] == "quick (CPU)"
