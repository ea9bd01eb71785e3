"""`make demo`: a quick tour of driftax over the reference targets.

Writes `out/report.md` and figures under `out/`. Each section is a module in this folder with a
`run(out_dir, quick) -> str` function returning Markdown; later capabilities add sections.

Usage: `python benchmarks/demo [--out out] [--full]`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

SECTIONS = [
    "targets",
    "samplers",
    "flows",
    "diffusion",
    "unnormalized",
    "state_space",
    "particles",
    "bridges",
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out", help="output folder (default: out)")
    parser.add_argument("--full", action="store_true", help="larger sample sizes")
    parser.add_argument("--sections", nargs="*", default=SECTIONS, help="sections to run")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(__file__).parent))
    parts = ["# driftax demo report\n"]
    failed = []
    for name in args.sections:
        t0 = time.perf_counter()
        print(f"[demo] section {name} ...", flush=True)
        try:
            module = importlib.import_module(name)
            parts.append(module.run(out, quick=not args.full))
        except Exception:  # noqa: BLE001 - a failing section is reported, the others still run
            failed.append(name)
            parts.append(f"## {name}\n\nSection failed:\n\n```\n{traceback.format_exc()}\n```\n")
        print(f"[demo] section {name} done in {time.perf_counter() - t0:.1f} s", flush=True)
    report = out / "report.md"
    report.write_text("\n".join(parts))
    print(f"[demo] wrote {report}")
    if failed:
        print(f"[demo] failed sections: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
