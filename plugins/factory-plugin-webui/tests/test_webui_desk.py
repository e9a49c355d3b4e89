"""The page's side of the job queue, without a browser: one training run at a time, what progress says."""

from __future__ import annotations

import pytest
from factory_plugin_webui.desk import AlreadyTraining, Desk, progress_text

from factory.plugin_api import FactoryError, JobQueue, load_config


@pytest.fixture
def base(tmp_path):
    return load_config(None, [f"results_db={tmp_path / 'r.db'}", f"jobs.output_dir={tmp_path / 'jobs'}"])


def test_a_second_training_run_is_refused_while_one_is_queued(base):
    queue = JobQueue(base.results_db)
    first = queue.submit("finetune", {"model": "smollm2-135m-instruct", "max_steps": 1})
    with pytest.raises(AlreadyTraining) as caught:
        Desk(base).submit({"max_steps": 2}, finetune=True)
    assert str(caught.value) == (
        f"finetune job {first.id} is already queued on this machine; stop it or wait for it "
        "to finish before starting another"
    )
    assert [job.id for job in queue.list(limit=None)] == [first.id]


def test_a_bad_value_is_refused_before_anything_is_queued(base):
    with pytest.raises(FactoryError, match="config key 'learning_rate'"):
        Desk(base).submit({"learning_rate": "abc"}, finetune=True)
    with pytest.raises(FactoryError, match="optimizer 'galore-8bit'"):
        Desk(base).submit({"optimizer": "galore-8bit"}, finetune=True)  # needs a GPU
    assert JobQueue(base.results_db).list(limit=None) == []


def test_latest_prefers_the_running_job_and_the_page_reads_progress_from_the_database(base):
    queue = JobQueue(base.results_db)
    old = queue.submit("finetune", {"max_steps": 1})
    claimed = queue.claim("w1", ["finetune"])
    assert claimed.id == old.id
    queue.heartbeat(
        old.id, "w1", done=3, total=8, eta_s=12.4, progress={"unit": "steps", "tokens_per_s": 512.3, "loss": 2.5}
    )
    desk = Desk(base)
    job = desk.latest(("finetune",))
    assert job.id == old.id
    assert (
        progress_text(job) == f"job {old.id} · finetune · running · 3/8 steps · ETA 12 s · 512 tokens/s · loss 2.5000"
    )
    run = {
        "progress": {"step": 4, "total": 8, "eta_s": 9.0, "tokens_per_s": 600.0},
        "loss_curve": [{"step": 4, "loss": 2.25}],
    }
    assert (
        progress_text(job, run)
        == f"job {old.id} · finetune · running · 4/8 steps · ETA 9 s · 600 tokens/s · loss 2.2500"
    )
    assert progress_text(None) == "no job yet"


def test_stop_cancels_a_queued_run_at_once_and_asks_a_running_one(base):
    queue = JobQueue(base.results_db)
    desk = Desk(base)
    assert desk.stop("finetune") == "no finetune job is queued or running"
    queued = queue.submit("finetune", {"max_steps": 1})
    assert desk.stop("finetune") == f"cancelled finetune job {queued.id} before it started"
    assert queue.get(queued.id).status == "cancelled"
    running = queue.submit("finetune", {"max_steps": 1})
    queue.claim("w1", ["finetune"])
    assert desk.stop("finetune") == f"asked finetune job {running.id} to stop; it stops at its next step"
    assert queue.get(running.id).cancel_requested
