"""Training runs in the database: recorded by every `factory finetune`, listed, shown and compared, linked
to the evals of what they wrote. The oracle for what a run did is its own output folder (metrics.json)."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

import factory
from factory.errors import DataError
from factory.eval.run import evaluate
from factory.store.training import TrainingRuns

CMMLU_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cmmlu"


def settings(model: Path, demo_dir: Path, out: Path, db: Path, **extra) -> list[str]:
    values = dict(
        model=str(model),
        dataset="alpaca_en_demo",
        dataset_dir=str(demo_dir),
        max_samples=16,
        cutoff_len=96,
        batch_size=4,
        max_steps=4,
        logging_steps=1,
        learning_rate=5e-3,
        val_size=0.25,
        output_dir=str(out),
        precision="fp32",
        sample_prompt="null",
        seed=3,
        results_db=str(db),
    )
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "factory.cli", *args], capture_output=True, text=True, timeout=900)


def test_a_finetune_appears_in_runs_after_its_process_exits(tiny_causal_lm, demo_dir, tmp_path):
    db, out = tmp_path / "runs.db", tmp_path / "lora"
    trained = cli("finetune", *settings(tiny_causal_lm, demo_dir, out, db))
    assert trained.returncode == 0, trained.stderr
    listed = cli("runs", "list", f"results_db={db}", "--json")
    assert listed.returncode == 0, listed.stderr
    [run] = json.loads(listed.stdout)
    assert (run["run"], run["kind"], run["status"], run["stage"], run["method"]) == (
        "train-1",
        "train",
        "succeeded",
        "sft",
        "lora",
    )

    shown = json.loads(cli("runs", "show", "train-1", f"results_db={db}", "--json").stdout)
    metrics = json.loads((out / "metrics.json").read_text())  # what the run itself wrote
    assert [(p["step"], p["loss"]) for p in shown["loss_curve"] if "loss" in p] == [
        (e["step"], e["loss"]) for e in metrics["log_history"] if "loss" in e
    ]
    assert [p["step"] for p in shown["loss_curve"] if "loss" in p] == [1, 2, 3, 4]
    assert shown["eval_scores"]["eval_loss"] == pytest.approx(metrics["eval_loss"])
    assert shown["data"] == metrics["data"] and shown["output_dir"] == str(out.resolve())
    assert shown["config"]["learning_rate"] == 5e-3 and shown["config"]["dataset"] == "alpaca_en_demo"
    assert shown["plugins"]["peft"]["version"] == importlib.metadata.version("factory-plugin-peft")
    assert (
        shown["duration_s"] > 0
        and shown["metrics"]["last_loss"] == [e["loss"] for e in metrics["log_history"] if "loss" in e][-1]
    )
    assert shown["metrics"]["trainable_parameters"] == metrics["trainable_parameters"]

    table = cli("runs", "list", f"results_db={db}")
    assert "train-1" in table.stdout and "succeeded" in table.stdout


def test_runs_compare_and_the_eval_of_an_adapter_links_back(tiny_causal_lm, demo_dir, tmp_path):
    db = tmp_path / "runs.db"
    for name, rate in (("a", "5e-3"), ("b", "1e-3")):
        factory.finetune(None, settings(tiny_causal_lm, demo_dir, tmp_path / name, db, learning_rate=rate))
    result = evaluate(
        None,
        [
            f"model={tiny_causal_lm}",
            f"adapter={tmp_path / 'b'}",
            "task=cmmlu",
            f"task_dir={CMMLU_DIR}",
            "subjects=anatomy",
            "max_samples=2",
            "n_shot=0",
            f"results_db={db}",
            "precision=fp32",
        ],
        progress=False,
    )
    history = json.loads(cli("eval", "history", f"results_db={db}", "--json").stdout)
    assert history[0]["id"] == result.run_id and history[0]["training_run"] == 2
    shown = json.loads(cli("runs", "show", "2", f"results_db={db}", "--json").stdout)
    assert shown["evaluations"] == [f"eval-{result.run_id}"]

    compared = json.loads(cli("runs", "compare", "train-1", "train-2", f"results_db={db}", "--json").stdout)
    assert [row["key"] for row in compared["settings"]] == ["learning_rate"]
    runs = TrainingRuns(str(db))
    final = {row["key"]: row for row in compared["outcomes"]}["final_loss"]
    assert (final["a"], final["b"]) == (runs.get(1).final_loss, runs.get(2).final_loss)
    assert final["delta"] == pytest.approx(final["b"] - final["a"])
    mixed = cli("runs", "compare", "train-1", f"eval-{result.run_id}", f"results_db={db}")
    assert mixed.returncode == 2 and "are of different kinds" in mixed.stderr


def test_a_failed_run_is_recorded_with_its_reason(tiny_causal_lm, demo_dir, tmp_path):
    db = tmp_path / "runs.db"
    with pytest.raises(DataError) as caught:
        factory.finetune(None, settings(tiny_causal_lm, demo_dir, tmp_path / "out", db, dataset="no_such_set"))
    [run] = TrainingRuns(str(db)).list()
    assert run.status == "failed" and run.error == str(caught.value) and run.finished_at >= run.started_at


def test_an_unreachable_database_costs_a_warning_not_the_run(tiny_causal_lm, demo_dir, tmp_path, caplog):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    metrics = factory.finetune(
        None, settings(tiny_causal_lm, demo_dir, tmp_path / "out", blocked / "runs.db", max_steps=2)
    )
    assert metrics["train_loss"] > 0
    assert any("this training run is not recorded in the results database" in r.getMessage() for r in caplog.records)


def test_bad_run_names_are_one_sentence(tmp_path):
    proc = cli("runs", "show", "run-3", f"results_db={tmp_path / 'r.db'}")
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == "error: run 'run-3' is not a run name; runs are named train-N or eval-N (see factory runs list)"
    )
    proc = cli("runs", "show", "train-9", f"results_db={tmp_path / 'r.db'}")
    assert (
        proc.returncode == 2
        and "training run 9 is not in" in proc.stderr
        and "it holds no training runs yet" in proc.stderr
    )
