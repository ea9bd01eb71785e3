"""Each paper reproduction's quick-profile core check (slow: they train and sample for minutes).

A reproduction script registers here by name; the test runs it the way a user does
(`python benchmarks/reproductions/<name>.py --quick --out <tmp> --seed 0`), in a fresh process, and
reads the JSON record it writes, asserting every claim row passed. A fresh process per script keeps
XLA's compiled state from piling up across the heavy reproductions (a worker that had compiled most of
the slow suite segfaulted inside XLA on two of them; alone they run cleanly). Rows that fail honestly
in the report are marked xfail below with the measured reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "benchmarks" / "reproductions"


def _names():
    return sorted(p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_"))


# name -> (phrases of the failing claims, reason): claims that do not hold in the quick profile
# (kept honest in the report). Every OTHER claim of these scripts must still pass.
KNOWN_FAILURES: dict[str, tuple[tuple[str, ...], str]] = {
    "l2hmc": (
        (
            "L2HMC beats HMC in ESS per gradient",
            "L2HMC tunnels between topological sectors",
            "training on the ESJD loss raises the expected squared jump",
        ),
        "quick profile (10 layers, 1500 ESJD training steps, 8x1500 draws): training raised the "
        "ESJD (0.91 -> 1.17) on the last machine, but on an AMD EPYC (other rounding, same seed) "
        "it fell 0.91 -> 0.43 (step size 0.061, acceptance 0.56): at this budget the ESJD "
        "training's outcome depends on rounding; the long-axis ESS per gradient is half of the best-step HMC's "
        "(1.4e-4 vs 2.9e-4, seed 0); the paper's ~100x was not reproduced. On u1_lattice (L = 4, "
        "beta = 4, 4 layers, 150 ESJD training steps) the trained kernel is exact but changes "
        "the topological charge no more often per gradient than HMC (8.4e-4 vs 9.4e-4, about 20 "
        "charge changes each over 8x600 draws, seed 0)",
    ),
    "closed_form_diffusion": (
        ("novel samples", "k-NN estimator"),
        "quick profile (200 points on the circle, EDM path, seed 0): smoothing 0 memorizes (100% "
        "within 1e-2) and smoothed samples stay on the circle (0.0064), but with a median spacing "
        "of 0.017 the smoothed samples sit between neighbours, under 1e-2 from one (12.7% novel by "
        "that threshold); the k-NN (k = 16) estimator differs from the full sum at high noise, "
        "where all 200 points carry weight (MMD permutation p = 0.010)",
    ),
    "solver_ordering": (
        (
            "NFE 5: Euler is the worst",
            "16-D), NFE 5: iPNDM is the best",
            "the paper's full order",
            "NFE 10: DPM-Solver-v3",
        ),
        "quick profile (exact EDM-path mixture fields, batch 256, error vs a tight diffrax solve, "
        "seed 0): at NFE 10 iPNDM is best and Euler worst on both targets, but DEIS edges out "
        "DPM-Solver++(3M) (2-D 0.423 vs 0.439, 16-D 1.16 vs 1.18) where the paper has DEIS last "
        "of the four; at NFE 5 DPM-Solver++(3M) on its log-SNR grid is the worst of all five "
        "(2-D 2.76 vs Euler 2.08; 16-D 6.25 vs 2.45) and in 16-D Euler on the rho = 7 grid is the "
        "best (2.45 < DEIS 2.86 < iPNDM 2.90): at 5 steps from sigma = 80 the per-trajectory "
        "error is order one, a regime FID (a distributional metric on a trained net) does not see. "
        "DPM-Solver-v3 (order 3 with its corrector, statistics from 64 mixture samples on 200 "
        "log-SNRs) beats DPM-Solver++(3M) and UniPC at NFE 5 (2-D 0.81 vs 2.76/1.93; 16-D 0.98 vs "
        "6.25/3.20) and in 16-D at NFE 10 (0.42 vs 1.18/0.53), but not in 2-D at NFE 10 (0.43 "
        "vs 0.44/0.23: UniPC stays ahead; the predictor alone gave 1.11)",
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
            "HMC, L = 8, beta = 6: mean plaquette",
        ),
        "quick profile (gauge flow trained 300 steps, KL ~45 nats; 4x1000 draws): neither HMC nor "
        "flowed HMC changes Q at beta = 6, so the >= 2x tunnelling claim fails; and the chains "
        "stay in their topological sectors (R-hat 3.3, bulk ESS ~1 per chain), so the MCSE "
        "understates the plaquette error: flowed HMC at beta = 6 measured z = +3.54, HMC at "
        "beta = 8 z = +4.63 (seed 0); on an AMD EPYC (other rounding) also HMC at beta = 6, "
        "0.91469 +- 0.00069 against 0.91245 (z = +3.26)",
    ),
    "sendera_table": (
        ("TB with the Langevin parameterization beats TB without",),
        "quick profile (gmm25, K = 10, 150 iterations of batch 64): the margin was inside the "
        "noise on the last machine (ELBO error 5.43 with the Langevin parameterization, 5.52 "
        "without) and is zero on an AMD EPYC (5.52 and 5.52, seed 0); the paper's budget is far "
        "larger",
    ),
    "fab": (
        (
            "FAB improves on its initial flow",
            "all 40 modes covered",
            "|Δlog Z| of importance sampling",
        ),
        "quick profile (150 steps x 64 AIS draws on gmm40, 100 x 64 on many_well(32); the paper "
        "trains for hours on a GPU): on gmm40 |Δlog Z| falls 0.168 -> 0.025 (goal 0.01) but the "
        "IS ESS stays ~70/2000 and 37/40 modes are covered; on many_well(32) the AIS weights are "
        "degenerate (ESS 1/64 per step) and |Δlog Z| stays ~30 against FAB's 0.0316 (seed 0)",
    ),
}

# name -> phrases of claims measured in wall time: the script reports them (benchmark evidence),
# the test does not assert them (a test never asserts on wall time; CI machines are shared)
WALL_TIME_CLAIMS: dict[str, tuple[str, ...]] = {
    "sliced_mmd_flow": ("cost near-linear in N",),
}


def test_registry_nonempty():
    """The framework finds the scripts (fails if the folder moved or is empty)."""
    assert _names(), f"no reproduction scripts in {HERE}"


def _run_quick(name: str, out: Path) -> dict:
    """Run one script's quick profile in a fresh interpreter; return its JSON record."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, str(HERE / f"{name}.py"), "--quick", "--out", str(out), "--seed", "0"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    record_path = out / "reproductions" / f"{name}.json"
    # exit code 1 means "a claim failed" (the record is written); anything else is a crash
    assert proc.returncode in (0, 1) and record_path.exists(), (
        f"{name} crashed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
    return json.loads(record_path.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", _names())
def test_reproduction_quick(name, tmp_path):
    record = _run_quick(name, tmp_path)
    if record["figure"] is not None:
        assert Path(record["figure"]).exists()
    phrases, reason = KNOWN_FAILURES.get(name, ((), ""))
    timed = WALL_TIME_CLAIMS.get(name, ())
    rows = [r for r in record["rows"] if not any(p in r["claim"] for p in timed)]
    failed = [r for r in rows if not r["passed"]]
    unexpected = [r for r in failed if not any(p in r["claim"] for p in phrases)]
    assert not unexpected, f"{name}: failed claims {unexpected}"
    if failed:
        pytest.xfail(reason)
