"""Shared plumbing for the paper reproductions in this folder.

Each reproduction is a script `benchmarks/reproductions/<name>.py` that defines

    PAPER = "Authors (year), title"
    def run(out: Path, quick: bool, seed: int) -> Report

and ends with `if __name__ == "__main__": raise SystemExit(main(run, NAME, PAPER))`.
`run` checks one or more claims of the paper (one `Row` each) and saves the paper's key figure
under `out/reproductions/`. `main` parses `--quick/--full`, `--out`, `--seed`, times the run and
writes `out/reproductions/<name>.json`; `python benchmarks/reproductions` (`make reproduce`) runs
every script's quick profile and collects the rows into `out/reproductions.md`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


@dataclasses.dataclass
class Row:
    """One claim checked: the paper's (or exact) number, driftax's number, and pass/fail."""

    claim: str
    reference: str
    measured: str
    passed: bool


@dataclasses.dataclass
class Report:
    """What a reproduction returns: its rows, the figure it saved, and free-form numbers."""

    rows: list[Row]
    figure: str | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)


def figure_path(out: Path, name: str) -> Path:
    """Where a reproduction saves its PNG: `out/reproductions/<name>.png` (folder created)."""
    folder = Path(out) / "reproductions"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.png"


def save_figure(fig, out: Path, name: str, *, rect=None, dpi: int = 110) -> str:
    """Lay out, save to `figure_path(out, name)` and close a matplotlib figure; returns the path.

    Works for a bare `matplotlib.figure.Figure` (no pyplot); a pyplot figure is closed after."""
    import sys

    fig.tight_layout(rect=rect) if rect is not None else fig.tight_layout()
    path = figure_path(out, name)
    fig.savefig(path, dpi=dpi)
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None and getattr(fig.canvas, "manager", None) is not None:
        plt.close(fig)
    return str(path)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "shape") and hasattr(value, "tolist"):  # jax arrays
        return _jsonable(np.asarray(value).tolist())
    return value


def write_json(
    out: Path, name: str, paper: str, report: Report, seconds: float, quick: bool, seed: int
) -> Path:
    """Write `out/reproductions/<name>.json` and return its path."""
    folder = Path(out) / "reproductions"
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "name": name,
        "paper": paper,
        "profile": "quick" if quick else "full",
        "seed": seed,
        "seconds": round(seconds, 2),
        "passed": report.passed,
        "figure": report.figure,
        "rows": [dataclasses.asdict(r) for r in report.rows],
        "details": _jsonable(report.details),
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(record, indent=2))
    return path


def markdown_rows(record: dict) -> list[str]:
    """Table rows `| paper | claim | reference | driftax | pass |` for one JSON record."""
    lines = []
    for row in record["rows"]:
        mark = "pass" if row["passed"] else "**fail**"
        lines.append(
            f"| [{record['name']}](../benchmarks/reproductions/{record['name']}.py) — {record['paper']} "
            f"| {row['claim']} | {row['reference']} | {row['measured']} | {mark} |"
        )
    return lines


TABLE_HEADER = ["| paper | claim | paper / exact | driftax | result |", "|---|---|---|---|---|"]


def main(run: Callable[..., Report], name: str, paper: str, argv=None) -> int:
    """Command line of a reproduction script: `[--quick | --full] [--out out] [--seed 0]`.

    Returns 0 when every claim passed and 1 otherwise (the JSON is written either way).
    """
    parser = argparse.ArgumentParser(description=f"Reproduction: {paper}")
    profile = parser.add_mutually_exclusive_group()
    profile.add_argument("--quick", action="store_true", default=True, help="CPU profile (default)")
    profile.add_argument("--full", action="store_true", help="the paper-scale profile")
    parser.add_argument("--out", default="out", help="output folder (default: out)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    quick = not args.full
    out = Path(args.out)
    t0 = time.perf_counter()
    report = run(out, quick=quick, seed=args.seed)
    seconds = time.perf_counter() - t0
    path = write_json(out, name, paper, report, seconds, quick, args.seed)
    record = json.loads(path.read_text())
    print("\n".join(TABLE_HEADER + markdown_rows(record)))
    print(f"[{name}] {'passed' if report.passed else 'FAILED'} in {seconds:.1f} s -> {path}")
    return 0 if report.passed else 1
