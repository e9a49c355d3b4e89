"""The results store: runs persist across processes, history lists them, compare diffs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from factory.errors import ConfigError
from factory.eval.results import EvalResult, Scores
from factory.eval.store import ENV, ResultsStore, compare, default_location

CMMLU_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cmmlu"


def result(anatomy: float, arts: float) -> EvalResult:
    return EvalResult(
        task="cmmlu",
        metric="accuracy",
        overall=Scores({"accuracy": (anatomy + arts) / 2}, 20),
        subjects={"anatomy": Scores({"accuracy": anatomy}, 10), "arts": Scores({"accuracy": arts}, 10)},
        categories={"STEM": Scores({"accuracy": anatomy}, 10)},
        settings={"n_shot": 5, "subjects": ["anatomy", "arts"]},
    )


def record(store: ResultsStore, res: EvalResult, adapter: str | None = None) -> int:
    return store.record(res, command="eval", model="m", adapter=adapter, duration_s=1.5, factory_version="0.1.0")


def test_runs_persist_and_compare(tmp_path):
    path = tmp_path / "sub" / "results.db"
    first = record(ResultsStore(str(path)), result(0.5, 0.25))
    second = record(ResultsStore(str(path)), result(0.75, 0.25), adapter="out/lora")

    store = ResultsStore(str(path))  # a fresh engine reads what the others wrote
    runs = store.runs()
    assert [(r.id, r.adapter, r.score, r.n) for r in runs] == [(second, "out/lora", 0.5, 20), (first, None, 0.375, 20)]
    a, b = store.get(first), store.get(second)
    assert a.settings == {"n_shot": 5, "subjects": ["anatomy", "arts"]}
    assert b.scores[("subject", "anatomy", "accuracy")] == (0.75, 10)
    rows = {(row["scope"], row["name"]): (row["a"], row["b"], row["delta"]) for row in compare(a, b)}
    assert rows == {
        ("overall", "overall"): (0.375, 0.5, 0.125),
        ("category", "STEM"): (0.5, 0.75, 0.25),
        ("subject", "anatomy"): (0.5, 0.75, 0.25),
        ("subject", "arts"): (0.25, 0.25, 0.0),
    }
    assert [row["scope"] for row in compare(a, b)] == ["overall", "category", "subject", "subject"]


def test_location_from_env_url_or_user_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(tmp_path / "env.db"))
    assert default_location() == str(tmp_path / "env.db")
    record(ResultsStore(), result(1.0, 0.0))
    assert (tmp_path / "env.db").is_file()

    monkeypatch.delenv(ENV)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_location() == str(tmp_path / "xdg" / "factory" / "results.db")

    url = f"sqlite:///{tmp_path / 'url.db'}"
    run_id = record(ResultsStore(url), result(1.0, 0.0))
    assert ResultsStore(str(tmp_path / "url.db")).get(run_id).score == 0.5


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("nosuchdb://host/x", r"results_db 'nosuchdb://host/x' names a database or driver SQLAlchemy does not know"),
        (
            "postgresql+nosuchdriver://u:secret@h/db",
            r"results_db 'postgresql\+nosuchdriver://u:\*\*\*@h/db' names a database or driver",
        ),
        ("mysql://u@h/db", r"results_db 'mysql://u@h/db' needs the Python package 'MySQLdb', which is not installed"),
        (
            "sqlite:////no/such/folder/x.db",
            r"results_db 'sqlite:////no/such/folder/x.db' cannot be opened \(unable to open database file\)",
        ),
    ],
)
def test_bad_locations(location, message):
    with pytest.raises(ConfigError, match=message) as err:
        ResultsStore(location)
    assert "\n" not in str(err.value)


def test_unknown_run(tmp_path):
    store = ResultsStore(str(tmp_path / "r.db"))
    with pytest.raises(
        ConfigError, match=r"run 3 is not in the results store .* \(it holds no runs yet\); see factory eval history"
    ):
        store.get(3)
    record(store, result(0.5, 0.5))
    with pytest.raises(ConfigError, match=r"\(runs go from 1 to 1\)"):
        store.get(3)


def cli(*args: str, db: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, ENV: str(db), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "factory.cli", *args], capture_output=True, text=True, check=False, env=env
    )


def test_two_cli_runs_survive_the_process(tiny_causal_lm, tmp_path):
    db = tmp_path / "results.db"
    common = [
        f"model={tiny_causal_lm}",
        "task=cmmlu",
        f"task_dir={CMMLU_DIR}",
        "subjects=anatomy,arts",
        "max_samples=4",
    ]
    runs = []
    for extra in (["n_shot=0", "eval_prompt=raw"], ["n_shot=1", "eval_prompt=chat"]):
        proc = cli("eval", *common, *extra, "--json", db=db)
        assert proc.returncode == 0, proc.stderr
        runs.append(json.loads(proc.stdout))
    assert [run["run_id"] for run in runs] == [1, 2]

    proc = cli("eval", "history", "--json", db=db)
    listed = json.loads(proc.stdout)
    assert [(r["id"], r["task"], r["model"], r["n"]) for r in listed] == [
        (2, "cmmlu", str(tiny_causal_lm), 8),
        (1, "cmmlu", str(tiny_causal_lm), 8),
    ]
    assert [r["settings"]["n_shot"] for r in listed] == [1, 0]
    assert [r["score"] for r in listed] == [
        runs[1]["overall"]["values"]["accuracy"],
        runs[0]["overall"]["values"]["accuracy"],
    ]

    proc = cli("eval", "compare", "1", "2", "--json", db=db)
    rows = {(row["scope"], row["name"]): row for row in json.loads(proc.stdout)["rows"]}
    for subject in ("anatomy", "arts"):
        a, b = (run["subjects"][subject]["values"]["accuracy"] for run in runs)
        assert (rows["subject", subject]["a"], rows["subject", subject]["b"]) == (a, b)
        assert rows["subject", subject]["delta"] == pytest.approx(b - a)
    assert {name for scope, name in rows if scope == "category"} == {"STEM", "Humanities"}

    table = cli("eval", "history", db=db).stdout
    assert "cmmlu" in table and "runs in" in table and "results.db" in table
    shown = cli("eval", "compare", "1", "2", db=db).stdout
    assert "anatomy" in shown and "arts" in shown and "B - A" in shown


def test_compare_needs_two_ids(tmp_path):
    proc = cli("eval", "compare", "1", db=tmp_path / "r.db")
    assert proc.returncode == 2
    assert proc.stderr == "error: factory eval compare needs two run ids (e.g. factory eval compare 3 5), got 1\n"
