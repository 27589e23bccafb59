"""The analysis commands and the paper's experiments, end to end on small digits runs: outputs
exist, have the documented structure, and make sense."""

import csv
import json
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from metaif import cli
from metaif.experiments import paper
from metaif.experiments.commands import QUICK
from metaif.experiments.common import AnalysisConfig, ExperimentConfig, Workspace, analyze, train_model
from metaif.experiments.retrain import retrain_from_scratch, retrain_without
from metaif.experiments.run import RunConfig
from metaif.linalg import MetaifWarning
from metaif.meta import Weights, solve_outer
from metaif.models import resnet12

# its module fixtures are built once: every test of the file on one xdist worker
pytestmark = pytest.mark.xdist_group("test_experiments")

SMALL = ["--train-tasks", "40", "--test-tasks", "40", "--steps", "20", "--score-tasks", "20", "--polish", "40",
         "--anchor", "1", "--quiet"]


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory):
    """One trained model that score / influence / edit reuse (they resume from its folder)."""
    return tmp_path_factory.mktemp("run")


@pytest.mark.slow
def test_score_influence_and_edit_commands(shared_run, capsys):
    out = str(shared_run)
    assert cli.main(["score", "--out", out, *SMALL]) == 0
    ranked = list(csv.DictReader(open(shared_run / "task_scores.csv")))
    assert len(ranked) == 40 and float(ranked[0]["score"]) <= float(ranked[-1]["score"])
    summary = json.loads((shared_run / "scores.json").read_text())
    assert summary["diagnostics"]["total_grad_norm"] < 1e-2  # polished to stationarity
    solve = summary["solve"]  # the scores' solve, as the results record it: rtol reached or at the floor
    assert solve["method"] == "cg" and solve["iterations_max"] >= 1
    assert solve["residual_max"] <= 1e-4 or solve["residual_max"] <= 10 * solve["floor_max"], solve
    assert cli.main(["influence", "--out", out, "--deltas", *SMALL]) == 0
    arrays = np.load(shared_run / "influence.npz")
    assert arrays["task_delta"].shape[0] == 40 and arrays["scores_train"].shape == (40, 5)
    assert json.loads(str(arrays["config"]))["variant"] == "exact"
    assert cli.main(["edit", "--out", out, "--remove-tasks", "0,3", "--remove-train", "1:0", "--polish-edit", "3",
                     *SMALL]) == 0
    edit = json.loads((shared_run / "edit.json").read_text())
    assert 1 <= edit["polish"]["iterations"] <= 3 and edit["polish"]["stop"]["rule"] == "absolute", edit["polish"]
    # two of 40 tasks and one support example: the edited model is a small step from the trained one
    before, after = edit["accuracy_before"], edit["accuracy_after"]
    assert edit["removed"]["tasks"] == [0, 3] and after != before and edit["solve"]["iterations_max"] >= 1
    assert abs(after["mean"] - before["mean"]) < before["ci95"], (before, after)
    assert torch.load(shared_run / "lambda_edited.pt").ndim == 1
    err = capsys.readouterr().err
    assert "it/s" not in err and "s/it" not in err and "%|" not in err, err  # --quiet: no progress bar anywhere


@pytest.mark.slow
def test_edit_without_items_says_what_to_do(shared_run, capsys):
    assert cli.main(["edit", "--out", str(shared_run), *SMALL]) == 2
    assert "give --remove-tasks" in capsys.readouterr().err


@pytest.mark.slow
def test_harmful_ranking_beats_random_and_resumes(tmp_path):
    run = replace(RunConfig(), **{**QUICK, "train_tasks": 100, "test_tasks": 100})
    config = paper.CurveConfig(fractions=(0.0, 0.25, 0.5), experiment=ExperimentConfig(
        run=run, analysis=AnalysisConfig(score_tasks=50, polish=60)))
    ws = Workspace(tmp_path, progress=False)
    result = paper.harmful(config, ws)
    for name in ("harmful_accuracy.png", "harmful_detection.png", "harmful_scores.png", "harmful.json", "ledger.json"):
        assert (tmp_path / name).stat().st_size > 0
    acc, found = result["accuracy"], result["found"]
    assert acc["influence score"][0] == acc["random"][0]  # nothing removed yet
    assert acc["influence score"][-1] > acc["random"][-1]
    assert found["influence score"][-1] > found["random"][-1]
    ledger = json.loads((tmp_path / "ledger.json").read_text())
    assert len(ledger) == 6
    again = paper.harmful(config, ws)  # everything comes from the ledger now
    assert again["accuracy"] == acc


def test_a_saved_experiment_config_round_trips(tmp_path):
    from metaif.experiments.common import load_experiment_config, save_config
    from metaif.influence import InfluenceConfig, SolverConfig

    analysis = AnalysisConfig(influence=InfluenceConfig(variant="gn", solver=SolverConfig(method="minres", damping=0.5)),
                              retrain="adam")
    config = ExperimentConfig(run=replace(RunConfig(), hidden=(8,), train_tasks=7), analysis=analysis, seeds=(1, 2),
                              fraction=0.1, levels=("task",), from_scratch=True)
    save_config(tmp_path, config)
    assert load_experiment_config(tmp_path / "config.json") == config


def test_table1_runs_the_rows_of_its_levels():
    both = paper.table1_methods(ExperimentConfig(from_scratch=True))
    tasks = paper.table1_methods(ExperimentConfig(levels=("task",), from_scratch=True))
    assert tasks == [row for row in both if row[0] == "task"] and ("task", "Retrain (from scratch)") in tasks
    assert {level for level, _ in both} == {"task", "instance"} and len(both) == 13


@pytest.mark.slow
def test_table1_resumed_with_more_levels_keeps_the_rows_it_has(tmp_path):
    run = replace(RunConfig(), **{**QUICK, "train_tasks": 30, "test_tasks": 20, "train": replace(QUICK["train"], steps=10)})
    analysis = AnalysisConfig(score_tasks=5, polish=5, anchor=1.0)
    config = ExperimentConfig(run=run, analysis=analysis, protocols=("random",), levels=("task",))
    ws = Workspace(tmp_path, progress=False)
    tasks = paper.table1(config, ws)["protocols"]["random"]
    assert {name.split("/")[0] for name in tasks} == {"task"}
    ledger = json.loads((tmp_path / "ledger.json").read_text())
    both = paper.table1(replace(config, levels=("task", "instance")), ws)["protocols"]["random"]
    assert {name.split("/")[0] for name in both} == {"task", "instance"}
    again = json.loads((tmp_path / "ledger.json").read_text())
    assert all(again[key] == entry for key, entry in ledger.items())  # the task rows were kept, not rerun


def test_a_retrain_that_stops_at_its_cap_says_so(tmp_path):
    run = replace(RunConfig(), **{**QUICK, "train_tasks": 40, "test_tasks": 20})
    analysis = AnalysisConfig(polish=30, anchor=1.0, polish_tol=1e-4)
    trained = train_model(run, analysis, Workspace(tmp_path, progress=False))
    with pytest.warns(MetaifWarning, match="retraining stopped at its cap of 2 L-BFGS iterations"):
        capped = retrain_without(trained, replace(analysis, polish=2), tasks=[0, 1, 2])
    assert capped.iterations == 2 and capped.grad_norm > 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("error", MetaifWarning)
        done = retrain_without(trained, replace(analysis, polish=500), tasks=[0, 1, 2])
    assert 2 < done.iterations < 500


@pytest.fixture(scope="module")
def small_trained(tmp_path_factory):
    """40 digits tasks polished around an anchor (a well-posed optimum). In float32, with inner problems
    solved to ~1e-6, L-BFGS stalls near max |D_lambda L| ~ 1e-4: polish_tol 1e-6 is never reached."""
    run = replace(RunConfig(), **{**QUICK, "train_tasks": 40, "test_tasks": 20})
    analysis = AnalysisConfig(polish=300, anchor=1.0, polish_tol=1e-6)
    return train_model(run, analysis, Workspace(tmp_path_factory.mktemp("small"), progress=False)), analysis


def test_the_relative_stopping_rule_stops_at_a_fraction_of_the_starting_gradient(small_trained):
    trained, analysis = small_trained
    absolute = retrain_without(trained, analysis, tasks=[0, 1, 2])
    relative = retrain_without(trained, replace(analysis, retrain_rtol=0.1), tasks=[0, 1, 2])
    stop = relative.stop
    assert stop["rule"] == "relative" and stop["reason"] == "tolerance", stop
    assert stop["threshold"] == pytest.approx(0.1 * stop["start_grad_max"]) and stop["threshold"] > 1e-6
    assert stop["final_grad_max"] <= stop["threshold"]
    assert absolute.stop["rule"] == "absolute" and absolute.stop["reason"] == "stalled", absolute.stop
    assert 0 < relative.iterations < absolute.iterations
    # the starting gradient the rule needs is L-BFGS's first evaluation, not an extra one
    weights = Weights.uniform(trained.train, trained.lam.dtype).without_positions(tasks=[0, 1, 2])
    same_path = solve_outer(trained.problem, trained.train, trained.lam, weights, tol=1e-12,
                            max_iter=relative.iterations)
    assert len(same_path.losses) == len(relative.losses) and same_path.stop["reason"] == "cap"
    assert torch.equal(same_path.lam, relative.lam)


def test_the_floor_stops_retraining_at_lambda_stars_own_gradient(small_trained):
    """lambda* stalled at its own max |D_lambda L| (above polish_tol); retraining without one task
    starts just above it and, with the floor, stops once down to it, far sooner than it stalls."""
    trained, analysis = small_trained
    floored = retrain_without(trained, replace(analysis, retrain_floor=True), tasks=[0])
    at_star = solve_outer(trained.problem, trained.train, trained.lam, max_iter=0).stop["final_grad_max"]
    stop = floored.stop
    assert stop["floor"] == at_star == trained.summary["stationarity_max"] and at_star > analysis.polish_tol
    assert stop["threshold"] == at_star and stop["reason"] == "tolerance", stop
    assert floored.iterations < retrain_without(trained, analysis, tasks=[0]).iterations
    with pytest.raises(ValueError, match="floor must be a finite number >= 0"):
        solve_outer(trained.problem, trained.train, trained.lam, floor=-1.0)


def test_an_edit_polished_by_the_retrain_solver_reaches_the_retrain_in_fewer_iterations(small_trained):
    """Removing 10 of 40 tasks: the retrain from lambda* stops on the relative rule; L-BFGS continued
    from the edit, to the same threshold on the objective without them, ends closer to the retrain
    than the edit alone (measured: 3x), in fewer iterations (measured: 2 against 4)."""
    trained, analysis = small_trained
    removal = {"tasks": list(range(10))}
    retrained = retrain_without(trained, replace(analysis, retrain_rtol=0.1), **removal)
    analyzer = analyze(trained, analysis, progress=False)
    edited = analyzer.edit(**removal)
    polished = analyzer.edit(**removal, polish=300, polish_tol=retrained.stop["threshold"])
    record = analyzer.editor.last_polish
    assert record.stop["reason"] == "tolerance" and retrained.stop["reason"] == "tolerance"

    def gap(lam):
        return float((lam - retrained.lam).norm())

    assert gap(polished) < 0.5 * gap(edited), (gap(polished), gap(edited))
    assert 0 < record.iterations < retrained.iterations, (record.iterations, retrained.iterations)
    with pytest.raises(ValueError, match="polish must be an integer >= 0"):
        analyzer.edit(**removal, polish=-1)


def test_retraining_from_scratch_repeats_the_run_that_made_lambda_star(small_trained):
    """The paper's protocol is the same meta-training and polish: with nothing removed it gives back
    lambda* bit for bit; without tasks it lands elsewhere, and records both stages' time."""
    trained, analysis = small_trained
    again = retrain_from_scratch(trained, analysis)
    assert torch.equal(again.lam, trained.lam)
    without = retrain_from_scratch(trained, analysis, tasks=[0, 1, 2])
    assert not torch.equal(without.lam, trained.lam) and without.wall_time > 0
    assert without.stop["rule"] == "absolute" and without.iterations >= 1


@pytest.mark.slow
def test_resnet12_on_rotated_omniglot_is_trained_and_edited_end_to_end(tmp_path):
    """The few-shot backbone (residual blocks, frozen batch norms: autograd body passes) on Omniglot
    with every turn of a character a class: trained, polished and edited by the command line."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
    if not root.is_dir():
        pytest.skip(f"no Omniglot at {root}")
    out = tmp_path / "r12"
    # an untrained body: the total Hessian is indefinite (MINRES), and a short solve only warns
    assert cli.main(["edit", "--dataset", "omniglot", "--root", str(root), "--model", "resnet12", "--widths",
                     "4,4,8,8", "--rotations", "--ways", "3", "--queries", "5", "--train-tasks", "8", "--test-tasks",
                     "8", "--steps", "3", "--polish", "3", "--anchor", "0.1", "--solver", "minres", "--max-iter", "40",
                     "--on-failure", "warn", "--remove-tasks", "2", "--quiet", "--out", str(out)]) == 0
    run = json.loads((out / "config.json").read_text())["run"]
    assert run["model"] == "resnet12" and run["widths"] == [4, 4, 8, 8] and run["rotations"]
    edited = json.loads((out / "edit.json").read_text())
    lam, lam_edited = torch.load(out / "model" / "lambda_star.pt"), torch.load(out / "lambda_edited.pt")
    assert lam.numel() == resnet12(1, (4, 4, 8, 8), 28).num_params and 0 < (lam_edited - lam).norm() < lam.norm()
    assert edited["removed"]["tasks"] == [2], edited


@pytest.mark.slow
def test_curation_retrains_from_scratch_on_the_kept_tasks_and_resumes(tmp_path):
    """Two seeds of a tiny corrupted digits curation: every order starts at the all-task model,
    each point is a from-scratch training on fewer tasks, influence-ordered removal finds more of
    the corrupted tasks than random, and a second call reads everything from the ledger."""
    from metaif.experiments.curate import ORDERS, curate, removal_orders

    run = replace(RunConfig(), **{**QUICK, "train_tasks": 40, "test_tasks": 40, "train": replace(QUICK["train"], steps=15)})
    config = paper.CurveConfig(fractions=(0.0, 0.25), task_fraction=0.25, experiment=ExperimentConfig(
        run=run, seeds=(0, 1), analysis=AnalysisConfig(score_tasks=10, validation_tasks=20, polish=40, anchor=1.0)))
    ws = Workspace(tmp_path, progress=False)
    result = curate(config, ws)
    png = (tmp_path / "curate_accuracy.png").read_bytes()
    assert int.from_bytes(png[16:20], "big") == 2 * 5 * 120  # two 5-inch panels: accuracy, and compute
    assert (tmp_path / "curate.json").exists()
    assert set(result["accuracy"]) == set(ORDERS)
    starts = {name: accs[0] for name, accs in result["accuracy"].items()}
    assert len(set(map(tuple, starts.values()))) == 1  # fraction 0 is the model trained on every task
    ledger = json.loads((tmp_path / "ledger.json").read_text())
    points = [ledger[f"{s}/{name}/0.250"] for s in (0, 1) for name in ORDERS]
    assert all(p["kept"] == 30 and p["seconds"] > 0 for p in points)
    found = {name: np.mean([ledger[f"{s}/{name}/0.250"]["corrupted_share_removed"] for s in (0, 1)]) for name in ORDERS}
    assert found["most harmful first"] > found["random"], found
    assert curate(config, ws) == result  # from the ledger
    orders = removal_orders(torch.tensor([0.5, -2.0, 0.1, -0.05]), seed=0)
    assert orders["most harmful first"] == [1, 3, 2, 0] and orders["least helpful first"] == [3, 2, 0, 1]
    assert sorted(orders["random"]) == [0, 1, 2, 3]
