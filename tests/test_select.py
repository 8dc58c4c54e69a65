"""Choosing without target labels: `transferlab.select` on hand-made evaluation histories, the
correlations it reports, directions in `summarize` and the sweepers, and `trainer.keep_best`."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from scipy.stats import spearmanr

from helpers import compose_config, run_in_process
from transferlab import select, selection, summarize
from transferlab.checkpoint import Checkpointer, load_safely
from transferlab.config import CONFIG_DIR, register_resolvers
from transferlab.errors import UserError
from transferlab.evaluation import evaluate
from transferlab.experiment import build, build_evaluators

DESCRIBED = {"source_acc": {"reads": ["source_test"], "labels": "source",
                            "higher_is_better": True},
             "target_acc": {"reads": ["target_test"], "labels": "target",
                            "higher_is_better": True},
             "source_val_acc": {"reads": ["source_val"], "labels": "source",
                                "higher_is_better": True},
             "snd": {"reads": ["target_val"], "labels": None, "higher_is_better": True},
             "entropy": {"reads": ["target_val"], "labels": None, "higher_is_better": False}}


def write_run(folder: Path, method: str, seed: int, lambda_max: float,
              history: dict[str, list[float]], objective: str = "source_val_acc") -> None:
    """A completed run's results.json with the given evaluation history (one list per
    metric, steps 1, 2, ...)."""
    steps = range(1, len(history["target_acc"]) + 1)
    rows = [{"step": s, "stage": "train", **{k: v[s - 1] for k, v in history.items()},
             "time_s": float(s)} for s in steps]
    record = {"status": "completed", "choices": {"data": "tiny", "method": method,
                                                 "backbone": "dann_mnist"},
              "seed": seed, "config": {"seed": seed, "objective": objective,
                                       "method": {"lambda_max": lambda_max}},
              "metrics": {k: v for k, v in rows[-1].items() if k in DESCRIBED},
              "evaluators": DESCRIBED, "history": rows, "wall_time_s": 1.0}
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(record))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Two DANN runs of three evaluations each, and a source-only run. By hand: `snd` is
    highest at run 1, step 2 (target 0.8); `entropy` lowest at run 1, step 3 (0.65); so is
    source_val_acc's best (0.97); the oracle is run 0, step 3 (0.9)."""
    write_run(tmp_path / "0", "dann", 0, 0.1, {
        "snd": [1.0, 3.0, 2.0], "entropy": [0.9, 0.5, 0.7], "target_acc": [0.5, 0.6, 0.9],
        "source_val_acc": [0.8, 0.95, 0.9], "source_acc": [0.8, 0.9, 0.9]})
    write_run(tmp_path / "1", "dann", 0, 1.0, {
        "snd": [2.5, 3.5, 1.0], "entropy": [0.6, 0.8, 0.4], "target_acc": [0.7, 0.8, 0.65],
        "source_val_acc": [0.9, 0.85, 0.97], "source_acc": [0.8, 0.9, 0.9]})
    write_run(tmp_path / "2", "source_only", 0, 1.0, {
        "snd": [9.0], "entropy": [0.1], "target_acc": [0.55], "source_val_acc": [0.99],
        "source_acc": [0.99]})
    return tmp_path


def rows_of(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    return {(r["method"], r["validator"]): r for r in csv.DictReader(path.open())}


def test_selection_picks_the_best_step_across_runs_in_each_direction(sweep: Path):
    groups = {g.method: g for g in selection.select(sweep, "snd", draw=False)}
    dann = groups["dann"]
    assert (dann.verdicts["snd"].chosen.run, dann.verdicts["snd"].chosen.step) == ("1", 2)
    assert (dann.verdicts["entropy"].chosen.run, dann.verdicts["entropy"].chosen.step) == ("1", 3)
    assert (dann.verdicts["source_val_acc"].chosen.run,
            dann.verdicts["source_val_acc"].chosen.step) == ("1", 3)
    assert (dann.oracle.run, dann.oracle.step) == ("0", 3)
    # Pooled over methods, the source-only run's single evaluation wins on snd and entropy.
    pooled = groups[selection.ALL_METHODS]
    assert pooled.verdicts["snd"].chosen.run == "2" and pooled.verdicts["entropy"].chosen.run == "2"

    rows = rows_of(sweep / "selection.csv")
    snd = rows[("dann", "snd")]
    assert (snd["chosen_run"], snd["chosen_step"], snd["chosen_target_acc"]) == ("1", "2", "0.8")
    assert rows[("dann", "entropy")]["chosen_target_acc"] == "0.65"
    assert rows[("dann", "entropy")]["oracle_target_acc"] == "0.9"
    # Spearman over the 6 DANN evaluations, with entropy's sign turned so higher is better.
    target = [0.5, 0.6, 0.9, 0.7, 0.8, 0.65]
    assert float(snd["spearman"]) == pytest.approx(
        spearmanr([1.0, 3.0, 2.0, 2.5, 3.5, 1.0], target).statistic)
    assert float(rows[("dann", "entropy")]["spearman"]) == pytest.approx(
        spearmanr([-0.9, -0.5, -0.7, -0.6, -0.8, -0.4], target).statistic)

    report = (sweep / "selection.md").read_text()
    assert "## Chosen by `snd` (higher is better)" in report
    line = next(x for x in report.splitlines() if x.startswith("| tiny | dann |"))
    assert "| 0.8000 |" in line and "0.9700" not in line
    assert "0.6500 (`1 method.lambda_max=1 seed=0`, step 3)" in line  # source_val_acc's
    assert "0.9000 (`0 method.lambda_max=0.1 seed=0`, step 3)" in line  # the oracle's


def test_selection_draws_one_scatter_plot_per_validator(sweep: Path, tmp_path: Path):
    out = tmp_path / "report"
    selection.select(sweep, "entropy", out=out, markdown=out / "SELECTION.md")
    assert sorted(p.name for p in out.glob("*.png")) == [
        "selection_entropy.png", "selection_snd.png", "selection_source_val_acc.png"]
    assert "![snd](selection_snd.png)" in (out / "SELECTION.md").read_text()


def test_weighted_spearman_on_a_hand_case():
    """Musgrave et al.'s definition: weights (dense rank / max)² of the scores, then the
    weighted Pearson correlation of the *weighted* ranks (each point's rank is the weight below
    it plus its own)."""
    # Scores (1, 2, 3): weights ∝ (1, 4, 9); weighted ranks of the scores (1, 5, 14). Accuracies
    # (0.1, 0.3, 0.2) sorted take weights 1, 9, 4: weighted ranks (1, 14, 10). Both weighted
    # means 147/14 = 10.5; Σw·dx·dy = 90.25 − 77 − 15.75 = −2.5, Σw·dx² = 321.5, Σw·dy² = 141.5.
    assert selection.weighted_spearman([1, 2, 3], [0.1, 0.3, 0.2]) == pytest.approx(
        -2.5 / math.sqrt(321.5 * 141.5))
    assert selection.spearman([1, 2, 3], [0.1, 0.3, 0.2]) == pytest.approx(0.5)
    # Scores (1, 2, 3, 4): weights (1, 4, 9, 16), weighted ranks (1, 5, 14, 30). Accuracies
    # (0.2, 0.3, 0.1, 0.4): weighted ranks (10, 14, 9, 30). Means 20.9 and 20.9.
    dx, dy, w = [-19.9, -15.9, -6.9, 9.1], [-10.9, -6.9, -11.9, 9.1], [1, 4, 9, 16]
    cov = sum(a * b * c for a, b, c in zip(w, dx, dy, strict=True))
    var_x = sum(a * b * b for a, b in zip(w, dx, strict=True))
    var_y = sum(a * b * b for a, b in zip(w, dy, strict=True))
    assert selection.weighted_spearman([1, 2, 3, 4], [0.2, 0.3, 0.1, 0.4]) == pytest.approx(
        cov / math.sqrt(var_x * var_y))
    assert selection.weighted_spearman([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    # A tie group takes the weight below it plus (count + 1) / 2 times its mean weight, as an
    # ordinary tie takes the mean of its positions: below 2, then 2 + 1.5 · 4 / 2 = 5.
    assert selection.weighted_ranks([2, 1, 2], np.array([1.0, 2.0, 3.0])
                                    ).tolist() == pytest.approx([5.0, 2.0, 5.0])
    assert math.isnan(selection.spearman([1, 1, 1], [0.1, 0.2, 0.3]))


def test_ensv_scores_agreement_with_the_averaged_ensemble():
    """Three candidates on four samples of two classes. The ensemble averages probabilities,
    so a confident minority can outvote a hesitant majority (sample 3)."""
    a = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.45, 0.55]])
    b = np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.45, 0.55]])
    c = np.array([[0.7, 0.3], [0.9, 0.1], [0.3, 0.7], [0.99, 0.01]])
    # means: [0.8, 0.2], [0.667, 0.333], [0.367, 0.633], [0.63, 0.37] → classes 0, 0, 1, 0
    assert selection.ensemble_agreement([a, b, c]) == pytest.approx([0.75, 0.5, 1.0])


def test_select_command_errors_are_one_line(sweep: Path, capsys):
    assert select.main([str(sweep), "--by", "nope", "--no-plot"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: --by nope was not measured by the runs below {sweep}; valid: "
                   "snd, entropy, source_val_acc")
    assert select.main([str(sweep / "missing"), "--by", "snd"]) == 2
    assert select.main([str(sweep), "--by", "snd", "--no-plot"]) == 0


def test_summary_marks_the_best_group_in_each_metrics_direction(tmp_path: Path, capsys):
    for i, (lam, entropy, acc) in enumerate([(0.1, 0.9, 0.7), (1.0, 0.3, 0.6)]):
        write_run(tmp_path / str(i), "dann", 0, lam, {
            "entropy": [entropy], "target_acc": [acc], "source_val_acc": [acc],
            "snd": [1.0], "source_acc": [0.9]}, objective="entropy")
    summarize.summarize(tmp_path, draw=False)
    lines = (tmp_path / "summary.md").read_text().splitlines()
    head = next(x for x in lines if x.startswith("| method"))
    assert "entropy ↓" in head and "target acc ↑" in head
    column = head.split(" | ").index("entropy ↓")
    cells = {x.split(" | ")[3]: x.split(" | ")[column]
             for x in lines if x.startswith("| dann")}
    assert cells == {"method.lambda_max=0.1": "0.9000 ± —",
                     "method.lambda_max=1": "0.3000 ± — *"}


@pytest.mark.parametrize("preset", ["optuna_max", "optuna_dann"])
@pytest.mark.parametrize("objective,direction", [("source_val_acc", "maximize"),
                                                 ("entropy", "minimize"), ("dev", "minimize"),
                                                 ("snd", "maximize")])
def test_optuna_presets_optimise_the_objective_in_its_direction(preset, objective, direction):
    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/sweeper={preset}", f"objective={objective}"],
                      return_hydra_config=True)
    assert OmegaConf.select(cfg, "hydra.sweeper.direction") == direction


def test_keep_best_survives_a_resume_and_prefers_the_earliest_tie(tmp_path: Path):
    method = torch.nn.Linear(2, 1)
    ckpt = Checkpointer(tmp_path, every=1, config={}, keep_best="entropy",
                        higher_is_better=False)
    ckpt.keep_if_best(5, {"entropy": 0.2}, method)
    ckpt.keep_if_best(10, {"entropy": 0.5}, method)
    ckpt.keep_if_best(12, {"entropy": 0.2}, method)  # a tie: the earlier one stays
    ckpt.keep_if_best(13, {"entropy": math.nan}, method)
    ckpt.save({"step": 13})
    assert load_safely(tmp_path / "best.pt")["step"] == 5

    resumed = Checkpointer(tmp_path, every=1, config={}, keep_best="entropy",
                           higher_is_better=False)
    resumed.load()
    resumed.keep_if_best(15, {"entropy": 0.3}, method)  # worse than step 5's 0.2: kept
    assert load_safely(tmp_path / "best.pt")["step"] == 5
    resumed.keep_if_best(20, {"entropy": 0.1}, method)
    best = load_safely(tmp_path / "best.pt")
    assert (best["step"], best["score"], best["validator"]) == (20, 0.1, "entropy")


def test_keep_best_writes_the_weights_of_the_best_evaluation(tmp_path: Path):
    overrides = ("method=dann", "trainer.steps=12", "trainer.eval_every=3",
                 "trainer.optimizer.lr=0.05",
                 "evaluation.validators=[source_val_acc,snd,entropy]", "objective=snd")
    record = run_in_process(tmp_path / "run", *overrides, "trainer.keep_best=snd")
    history = record["history"]
    best_entry = max(history, key=lambda h: h["snd"])  # max keeps the first of ties
    assert best_entry is not history[-1]  # else the last weights would pass too
    best = load_safely(tmp_path / "run" / "checkpoints" / "best.pt")  # weights_only
    assert (best["step"], best["score"]) == (best_entry["step"], best_entry["snd"])
    assert record["best"] == {"validator": "snd", "step": best["step"], "score": best["score"]}

    cfg = compose_config("data=tiny", "device=cpu", *overrides)
    pair, method = build(cfg, torch.device("cpu"))
    method.load_state_dict(best["method"])
    metrics = evaluate(method, pair, build_evaluators(cfg), batch_size=256)
    for name in ("target_acc", "source_val_acc", "snd", "entropy"):
        assert metrics[name] == pytest.approx(best_entry[name], abs=1e-5), name


def test_keep_best_must_name_a_measured_evaluator(tmp_path: Path):
    with pytest.raises(UserError, match=r"trainer.keep_best='nope' is invalid: must be one of "
                                        r"source_acc, target_acc, source_val_acc"):
        run_in_process(tmp_path / "run", "trainer.steps=1", "trainer.keep_best=nope")


def write_predictions(folder: Path, classes_by_step: dict[int, list[int]]) -> None:
    """A run's target_val predictions: confident one-hot rows of the given classes."""
    steps = sorted(classes_by_step)
    probabilities = np.stack([np.eye(3, dtype=np.float16)[classes_by_step[s]] * 0.9 + 0.1 / 3
                              for s in steps])
    np.savez_compressed(folder / "target_val_predictions.npz", steps=np.array(steps),
                        probabilities=probabilities)


def test_the_guard_says_an_adapted_choice_that_strays_from_the_ensemble_is_likely_worse(
        tmp_path: Path, capsys):
    """Source-only (two seeds) and DANN predict 4 target_val images. The ensemble of all four
    candidates predicts [0, 1, 2, 0]; source-only's finals agree with it on 4 of 4, DANN's
    choice (its highest snd, predicting [0, 0, 1, 1]) on 1 of 4: likely worse. Its predicted
    class shares [1/2, 1/2, 0] against source-only's [1/2, 1/4, 1/4] moved 1/4 (total
    variation)."""
    for name, seed in (("a", 0), ("b", 1)):
        write_run(tmp_path / name, "source_only", seed, 1.0, {
            "snd": [1.0], "target_acc": [0.9], "source_val_acc": [0.99], "source_acc": [0.99],
            "entropy": [0.5]})
        write_predictions(tmp_path / name, {1: [0, 1, 2, 0]})
    write_run(tmp_path / "c", "dann", 0, 1.0, {
        "snd": [2.0, 5.0], "target_acc": [0.8, 0.5], "source_val_acc": [0.97, 0.95],
        "source_acc": [0.99, 0.99], "entropy": [0.5, 0.1]})
    write_predictions(tmp_path / "c", {1: [0, 1, 2, 0], 2: [0, 0, 1, 1]})
    groups = selection.select(tmp_path, "snd", draw=False)
    pooled = next(g for g in groups if g.method == selection.ALL_METHODS)
    chosen = pooled.verdicts["snd"].chosen
    assert (chosen.run, chosen.step) == ("c", 2)
    assert [p.metrics["ensv"] for p in pooled.points] == [1.0, 1.0, 1.0, 0.25]
    verdict = selection.guard(pooled.points, chosen)
    assert verdict.likely_worse
    assert verdict.shares_moved == pytest.approx(0.25)
    assert verdict.source_val_change == pytest.approx(0.95 - 0.99)
    assert "guard: snd's choice (dann, `c" in (tmp_path / "selection.md").read_text()
    assert "is likely WORSE than source-only" in selection.sweep_verdicts(tmp_path, "snd")[0]
    # An adapted choice that agrees with the ensemble as source-only does: not worse.
    assert not selection.guard(pooled.points, pooled.points[2]).likely_worse
