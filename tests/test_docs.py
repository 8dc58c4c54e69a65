"""What the README promises about a run is what a run does: its TensorBoard tags, its console
table, its commands; and the README stays a README (the manual is the docs site)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from conftest import ROOT, TINY_FAST, run_cli
from helpers import scalar_tags

README = (ROOT / "README.md").read_text()
EXAMPLE = "python -m transferlab method=dann data=tiny trainer.steps=20 trainer.eval_every=10"


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The README's example command, as a user would type it (plus where to write)."""
    tmp = tmp_path_factory.mktemp("readme")
    result = run_cli(*EXAMPLE.split()[3:], *TINY_FAST, f"hydra.run.dir={tmp / 'run'}",
                     cwd=tmp)
    return tmp / "run", result.stdout


def documented_tags() -> set[str]:
    row = next(line for line in README.splitlines() if line.startswith("| `tb/` |"))
    return {t for t in re.findall(r"`([a-z_]+/[a-z_]+)`", row)}


def test_the_readme_documents_the_report_tags():
    assert {"acc/source", "acc/target", "val/source_val_acc"} <= documented_tags()


def test_every_documented_tensorboard_tag_is_in_the_run_event_file(example_run):
    run_dir, _ = example_run
    written = set(scalar_tags(run_dir))
    missing = documented_tags() - written
    assert not missing, f"the README documents tags no run writes: {sorted(missing)}"


def test_the_readme_console_table_is_what_the_cli_prints(example_run):
    """Row by row, with the value column (which varies) and the run folder masked."""
    _, stdout = example_run
    block = README.split(EXAMPLE + "`:\n\n```\n", 1)[1].split("```", 1)[0]

    def masked(text: str) -> list[str]:
        lines = text.strip().splitlines()
        table = lines[lines.index(next(x for x in lines if " → " in x)):]
        return [re.sub(r"\s-?\d+\.\d{4}|\snan", " VALUE", x) for x in table
                if not x.startswith("run folder:")]

    assert masked(block) == masked(stdout)


def test_the_readme_fits_on_a_few_screens():
    assert len(README.splitlines()) <= 250


@pytest.mark.parametrize("module", sorted(set(re.findall(r"python -m (transferlab[.\w]*)",
                                                          README))))
def test_every_command_the_readme_names_exists(module: str):
    imported = importlib.import_module(module if module != "transferlab" else "transferlab.cli")
    assert callable(getattr(imported, "main", None)), module


def test_every_docs_link_in_the_readme_points_to_a_file():
    for link in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (ROOT / link).exists(), link
