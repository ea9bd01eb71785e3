"""Every ```python block of every docs/*.md page runs (blocks of a page share one namespace).

Sizing: each page gets a fresh namespace and working directory but runs in the worker's own
process, so the imports and the library's compiled programs are shared between pages (no process
per page). A page's CPU is mostly XLA compilation, not its loops, so the examples avoid loops of
recompiles (array, not Python-float, hyperparameters where a loop varies one; one size per
function) rather than shortening their runs."""

import re
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

ROOT = Path(__file__).parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def test_docs_exist():
    assert DOCS, "docs/ has no pages"


@pytest.mark.parametrize("page", DOCS, ids=[p.name for p in DOCS])
def test_doc_examples_run(page, tmp_path, monkeypatch):
    blocks = BLOCK.findall(page.read_text())
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{page.name}[block {i}]", "exec"), namespace)
        except Exception as e:  # noqa: BLE001 - re-raise with the block's location
            raise AssertionError(f"{page.name}, python block {i} failed: {e!r}") from e
