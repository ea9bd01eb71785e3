"""`make reproduce`: run every reproduction's quick profile and write `out/reproductions.md`.

Each script runs in its own process (`python benchmarks/reproductions/<name>.py --quick`), so one
failure or crash does not stop the others; a crashed script appears in the report as a failed row.

Usage: `python benchmarks/reproductions [--out out] [--full] [--only name ...]`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from _common import TABLE_HEADER, markdown_rows  # noqa: E402


def scripts() -> list[str]:
    """Names of every reproduction script in this folder (files not starting with `_`)."""
    return sorted(p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out")
    parser.add_argument("--full", action="store_true", help="paper-scale profiles (GPU)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these scripts")
    args = parser.parse_args(argv)
    out = Path(args.out)
    names = args.only or scripts()
    lines = ["# driftax paper reproductions\n", *TABLE_HEADER]
    figures, failed = [], []
    for name in names:
        t0 = time.perf_counter()
        print(f"[reproduce] {name} ...", flush=True)
        cmd = [
            sys.executable,
            str(HERE / f"{name}.py"),
            "--full" if args.full else "--quick",
            "--out",
            str(out),
        ]
        proc = subprocess.run(cmd, check=False)
        path = out / "reproductions" / f"{name}.json"
        record = (
            json.loads(path.read_text()) if path.exists() and proc.returncode in (0, 1) else None
        )
        if record is None:
            failed.append(name)
            lines.append(f"| {name} | script crashed (exit {proc.returncode}) | | | **fail** |")
        else:
            lines.extend(markdown_rows(record))
            if not record["passed"]:
                failed.append(name)
            if record.get("figure"):
                figures.append(f"![{name}](reproductions/{Path(record['figure']).name})")
        print(f"[reproduce] {name} done in {time.perf_counter() - t0:.1f} s", flush=True)
    lines += [
        "",
        f"{len(names) - len(failed)} of {len(names)} reproductions passed.",
        "",
        *figures,
        "",
    ]
    report = out / "reproductions.md"
    out.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines))
    print(f"[reproduce] wrote {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
