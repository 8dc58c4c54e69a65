"""The result pages are what their committed records give: rebuilding them changes nothing,
and a record's number changed changes its page."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import ROOT
from transferlab import pages, studies


def test_every_committed_page_is_what_its_records_give():
    stale = [p.relative_to(ROOT) for p in pages.pages(ROOT / "docs")
             if pages.render(p.read_text(), ROOT) != p.read_text()]
    assert not stale, f"rebuild with `make results-pages`: {stale}"


PLAN = """
results: results/tiny
settings:
  a: "data=tiny trainer.steps=6"
sweeps:
  - "method=source_only,dann seed=0,1"
published:
  a: {"method=dann": 0.5}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "tiny.yaml").write_text(PLAN)
    plan = studies.load_plan(tmp_path / "studies" / "tiny.yaml")
    plan.results.mkdir(parents=True)
    template = json.loads(next((ROOT / "tests" / "records").glob("*.json")).read_text())
    for job, accuracy in zip(plan.jobs[:3], (0.25, 0.75, 0.5), strict=True):
        record = {**template, "seed": int(job.value("seed")), "overrides": list(job.overrides),
                  "metrics": {**template["metrics"], "target_acc": accuracy}}
        (plan.results / f"{job.name}.json").write_text(json.dumps(record))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        "Prose.\n<!-- generated: table studies/tiny.yaml a -->\n<!-- end generated -->\n")
    return tmp_path


def test_a_table_shows_mean_std_seeds_missing_runs_and_published_numbers(project: Path):
    text = pages.render((project / "docs" / "page.md").read_text(), project)
    assert text.startswith("Prose.\n<!-- generated: table studies/tiny.yaml a -->\n")
    assert "| `method=source_only` | 0.5000 ± 0.3536 (2 seeds) | — |" in text
    assert "| `method=dann` | 0.5000 ± — (1 seed, 1 of 2 asked) | 0.5 |" in text
    assert "--only method=dann" in text  # how to make the missing run


def test_changing_a_record_changes_the_page(project: Path):
    page = project / "docs" / "page.md"
    page.write_text(pages.render(page.read_text(), project))
    assert pages.main([str(project / "docs"), "--check"]) == 0
    record = next((project / "results" / "tiny").glob("*method=dann*.json"))
    changed = json.loads(record.read_text())
    changed["metrics"]["target_acc"] = 0.625
    record.write_text(json.dumps(changed))
    assert pages.main([str(project / "docs"), "--check"]) == 1
    shutil.rmtree(project / "results")
    assert pages.main([str(project / "docs")]) == 0
    assert "| `method=dann` | not run yet | 0.5 |" in page.read_text()
