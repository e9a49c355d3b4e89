"""No finished eval is lost to its database: locked, read-only or changed under it, the result is
still printed and written as JSON beside the outputs, with one sentence naming the database's error.

Each fault is real: another connection holding an open write transaction on the SQLite file, a
read-only connection, a table replaced with another schema while the run was scoring.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from factory.eval.run import evaluate
from factory.store.evals import ResultsStore

CMMLU_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cmmlu"


def settings(model: Path, db: str, out: Path, timeout: float = 0.5) -> list[str]:
    return [
        f"model={model}",
        "task=cmmlu",
        f"task_dir={CMMLU_DIR}",
        "subjects=anatomy",
        "max_samples=4",
        "n_shot=0",
        f"results_db={db}",
        f"results_db_timeout={timeout}",
        f"output_dir={out}",
        "precision=fp32",
    ]


def hold_write_lock(path: Path) -> sqlite3.Connection:
    """Another connection in the middle of a write transaction on the file."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO factory_job_logs (job_id, at, level, message) VALUES (0, 0, 'info', 'holding the lock')")
    return conn


def saved_results(out: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(out.glob("eval-result-cmmlu-*.json"))]


def test_a_locked_database_still_prints_and_saves_the_result(tmp_path, tiny_causal_lm):
    db, out = tmp_path / "results.db", tmp_path / "out"
    ResultsStore(str(db))
    lock = hold_write_lock(db)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "factory.cli", "eval", *settings(tiny_causal_lm, str(db), out)],
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        lock.rollback()
        lock.close()
    assert proc.returncode == 0, proc.stderr
    assert "anatomy" in proc.stdout and "overall" in proc.stdout  # printed as usual
    [saved] = saved_results(out)
    path = next(out.glob("eval-result-cmmlu-*.json"))
    sentence = f"the database 'sqlite:///{db}' refused the write (database is locked); the result was written to {path} instead"
    assert f"warning (factory.eval.run): {sentence}" in proc.stderr.splitlines()
    assert (
        saved["overall"]["n"] == 4
        and set(saved["subjects"]) == {"anatomy"}
        and saved["database_error"].endswith("(database is locked)")
    )
    assert saved["model"] == str(tiny_causal_lm) and saved["command"] == "eval"
    assert ResultsStore(str(db)).runs() == []
    assert [p.name for p in out.iterdir() if p.name.endswith(".partial")] == []


def test_a_briefly_locked_database_is_waited_for(tmp_path, tiny_causal_lm):
    db, out = tmp_path / "results.db", tmp_path / "out"
    ResultsStore(str(db))
    lock = hold_write_lock(db)
    release = threading.Timer(1.0, lambda: (lock.rollback(), lock.close()))

    def start_releasing(done: int, total: int) -> None:
        if done == total and not release.is_alive() and not release.finished.is_set():
            release.start()  # the write below finds the file locked, and the lock goes a second later

    started = time.monotonic()
    result = evaluate(None, settings(tiny_causal_lm, str(db), out, timeout=10), progress=start_releasing)
    release.join()
    assert result.run_id is not None and time.monotonic() - started >= 1.0
    assert ResultsStore(str(db)).get(result.run_id).n == 4 and saved_results(out) == []


def test_a_read_only_database_still_saves_the_result(tmp_path, tiny_causal_lm, caplog):
    db, out = tmp_path / "results.db", tmp_path / "out"
    ResultsStore(str(db))
    read_only = f"sqlite:///file:{db}?mode=ro&uri=true"
    with caplog.at_level(logging.WARNING, logger="factory"):
        result = evaluate(None, settings(tiny_causal_lm, read_only, out))
    assert result.run_id is None
    [saved] = saved_results(out)
    assert saved["overall"] == {"values": result.overall.values, "n": 4}
    [message] = [record.getMessage() for record in caplog.records if record.name == "factory.eval.run"]
    assert "refused the write (attempt to write a readonly database); the result was written to" in message


def test_a_table_changed_during_the_run_still_saves_the_result(tmp_path, tiny_causal_lm, caplog):
    db, out = tmp_path / "results.db", tmp_path / "out"
    ResultsStore(str(db))

    def replace_scores_table(done: int, total: int) -> None:
        if done == 0:  # another program replaces the table while the run scores
            with sqlite3.connect(db) as conn:
                conn.execute("DROP TABLE factory_eval_scores")
                conn.execute("CREATE TABLE factory_eval_scores (id INTEGER PRIMARY KEY, other TEXT)")

    with caplog.at_level(logging.WARNING, logger="factory"):
        result = evaluate(None, settings(tiny_causal_lm, str(db), out), progress=replace_scores_table)
    assert result.run_id is None and len(saved_results(out)) == 1
    [message] = [record.getMessage() for record in caplog.records if record.name == "factory.eval.run"]
    assert "refused the write (table factory_eval_scores has no column named run_id)" in message
    with sqlite3.connect(db) as conn:  # the run row went back with its scores: nothing half-written
        assert conn.execute("SELECT count(*) FROM factory_eval_runs").fetchone() == (0,)


def test_a_database_of_another_schema_is_refused_before_the_model_loads(tmp_path, tiny_causal_lm):
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE factory_eval_runs (id INTEGER PRIMARY KEY, note TEXT)")
    proc = subprocess.run(
        [sys.executable, "-m", "factory.cli", "eval", *settings(tiny_causal_lm, str(db), tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: results_db 'sqlite:///{db}' holds a table 'factory_eval_runs' without the column "
        "'created_at' (another program's or another version's table); point results_db at a new database"
    )
    assert not (tmp_path / "out").exists()  # nothing was scored or written


@pytest.mark.parametrize("timeout", ["0", "-1", "1e9"])
def test_results_db_timeout_is_bounded(timeout):
    from factory.config import load_config
    from factory.errors import ConfigError

    with pytest.raises(ConfigError, match="config key 'results_db_timeout'"):
        load_config(None, [f"results_db_timeout={timeout}"])
