"""The real page in headless Chromium (the system's browser and driver, driven by Selenium).

One ``factory webui`` server for the module, started as a user would, on a throwaway database,
with the real SmolLM2 model and a third-party plugin (probe) installed for the server and its
worker. The tests run in file order: the fine-tune's adapter is what Chat talks to.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from factory_plugin_webui.browser import Page, chromium, missing_browser, screenshots, webui_server

from factory.plugin_api import JobQueue, load_config, resolve_alias

HERE = Path(__file__).parent
SHARED = Path(__file__).resolve().parents[4] / "shared" / "data"
DEMO, CMMLU = SHARED / "llamafactory-demo", SHARED / "cmmlu"

SCREENSHOTS_ENV = "FACTORY_WEBUI_SCREENSHOTS"
pytestmark = pytest.mark.skipif(missing_browser() is not None, reason=str(missing_browser()))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("webui")


@pytest.fixture(scope="module")
def server(workspace):
    """The page's URL: SmolLM2, LoRA, 8 demo rows, a few steps; the probe callback on; its own database."""
    site = workspace / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(HERE / "fixtures" / "probe"),
        ],
        check=True,
        capture_output=True,
    )
    db = workspace / "results.db"
    args = [
        f"model={resolve_alias('smollm2-135m-instruct')}",
        f"dataset_dir={DEMO}",
        "dataset=alpaca_en_demo",
        "max_samples=8",
        "batch_size=2",
        "max_steps=4",
        "logging_steps=1",
        "cutoff_len=256",
        "sample_prompt=null",
        "callbacks=[probe]",
        "max_new_tokens=24",
        f"task_dir={CMMLU}",
        f"results_db={db}",
        f"jobs.output_dir={workspace / 'jobs'}",
    ]
    env = {
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        "FACTORY_RESULTS_DB": str(db),
        "FACTORY_WEBUI_WORKER_IDLE": "30",
    }  # the detached worker does not outlive the tests by long
    with webui_server(args, env=env, log=workspace / "webui.log") as url:
        yield url, JobQueue(str(db))


@pytest.fixture(scope="module")
def page(server):
    driver = chromium()
    page = Page(driver, server[0])
    page.open()
    yield page
    if os.environ.get(SCREENSHOTS_ENV):  # scripts/screenshots.py: the docs' pictures, of the page the tests used
        screenshots(page, Path(os.environ[SCREENSHOTS_ENV]))
    driver.quit()


def test_bad_learning_rate_shows_the_cli_sentence_and_starts_nothing(page, server):
    queue = server[1]
    before = len(queue.list(limit=None))
    page.type("train-learning-rate", "abc")
    page.click("train-start")
    error = page.wait(lambda: page.text("train-error-learning-rate"), 30, "the error under learning_rate")
    assert (
        error
        == "⚠ config key 'learning_rate': Input should be a valid number, unable to parse string as a number (got 'abc')"
    )
    time.sleep(1)
    assert len(queue.list(limit=None)) == before
    page.type("train-learning-rate", "0.0002")


def test_model_type_and_auto_template_are_shown(page):
    info = page.text("model-info")
    assert "model type: llama" in info and "template auto" in info


def test_preview_renders_rows_through_the_template_with_trained_spans(page):
    page.click("train-preview")
    trained = page.wait(
        lambda: page.driver.find_elements("css selector", "#train-preview-rows mark.trained"), 120, "the preview rows"
    )
    text = page.text("train-preview-rows")
    assert "alpaca_en_demo · supervised data · 8 rows" in text
    assert "<|im_start|>assistant" in text  # SmolLM2's own chat template renders the rows
    assert len(trained) >= 3  # the answers of the first three rows, and only they, are trained
    assert all("<|im_start|>user" not in mark.text for mark in trained)


def test_settings_saved_from_the_page_are_read_by_factory_finetune(page, workspace):
    path = workspace / "saved" / "settings.yaml"
    page.type("train-warmup-steps", "1")
    page.type("settings-path", str(path))
    page.click("settings-save")
    page.wait(lambda: "saved to" in page.text("train-status"), 30, "the settings to be saved")
    cfg = load_config(str(path))  # what `factory finetune FILE` reads
    assert (cfg.warmup_steps, cfg.learning_rate, cfg.max_steps, cfg.callbacks) == (1, 0.0002, 4, ["probe"])
    assert cfg.model == str(resolve_alias("smollm2-135m-instruct")) and cfg.datasets == ["alpaca_en_demo"]
    # Show command: the same settings as YAML and as a factory finetune line
    page.click("train-command")
    line = page.wait(lambda: page.value("train-command-line"), 30, "the command line")
    assert line.startswith("factory finetune ") and "warmup_steps=1" in line
    assert load_config(None, shlex.split(line)[2:]).to_dict() == cfg.to_dict()
    assert "warmup_steps: 1" in page.text("train-yaml")


def test_labels_switch_between_english_and_chinese(page):
    def tabs() -> list[str]:
        return [b.text.strip() for b in page.driver.find_elements("css selector", "button[role='tab']")]

    assert tabs()[:5] == ["Train", "Chat", "Evaluate", "Export", "Runs"]
    page.choose("language", "中文")
    page.wait(lambda: tabs()[:5] == ["训练", "对话", "评估", "导出", "运行记录"], 30, "the Chinese labels")
    assert page.find("#train-start").text == "开始"
    assert "学习率" in page.find("#train-learning-rate").text
    page.choose("language", "English")
    page.wait(lambda: tabs()[:5] == ["Train", "Chat", "Evaluate", "Export", "Runs"], 30, "the English labels")


@pytest.mark.e2e
def test_lora_finetune_from_the_train_tab(page, server, workspace):
    queue = server[1]
    # the third-party plugin's fields are in the page with no UI code; fill two of them
    page.open_accordion("section-probe")
    page.type("train-probe-greeting", "hello from the page")
    page.type("train-probe-repeats", "3")
    page.click("train-start")
    status = page.wait(
        lambda: "queued finetune job" in page.text("train-status") and page.text("train-status"), 30, "the job"
    )
    job_id = int(status.split()[-1])
    # a second Start does not start a second run on this machine
    page.click("train-start")
    refused = page.wait(lambda: "already" in page.text("train-status") and page.text("train-status"), 30, "the refusal")
    assert refused.startswith(f"⚠ finetune job {job_id} is already")
    assert [j.id for j in queue.list(kinds=["finetune"], limit=None)] == [job_id]
    # the run lives in the database: a reopened page shows it live
    page.open()
    page.wait(lambda: f"job {job_id}" in page.text("train-progress"), 60, "the reopened page to show the job")
    page.wait(lambda: "succeeded" in page.text("train-progress"), 600, "the run to finish", every=1.0)
    progress = page.text("train-progress")
    assert "4/4 steps" in progress and "tokens/s" in progress
    page.wait(
        lambda: page.driver.find_elements("css selector", "#train-loss canvas, #train-loss svg"), 30, "the loss curve"
    )
    assert "loss" in page.value("train-log")
    job = queue.get(job_id)
    assert job.status == "succeeded" and job.run
    out = Path(job.config["output_dir"])
    assert json.loads((out / "probe.json").read_text()) == {
        "greeting": "hello from the page",
        "repeats": 3,
        "mode": "quiet",
    }
    assert (out / "adapter_config.json").is_file()


@pytest.mark.e2e
def test_streamed_answer_in_the_chat_tab(page, server):
    queue = server[1]
    job = queue.list(kinds=["finetune"], statuses=["succeeded"], limit=1)[0]
    adapter = queue.get(job.id).config["output_dir"]
    page.tab("Chat")
    page.type("chat-adapter", adapter)
    page.type("chat-message", "Who are you?")
    page.click("chat-send")
    seen = []

    def answer() -> str:
        bots = page.driver.find_elements("css selector", "#chat-history [data-testid='bot']")
        text = bots[-1].text if bots else ""
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        return text

    page.wait(lambda: answer() is not None and page.text("chat-status") == "answered", 300, "the answer", every=0.05)
    final = answer()
    assert final.strip()
    assert len(seen) >= 2 and all(final.startswith(part) for part in seen[:-1])  # it arrived in pieces


@pytest.mark.e2e
def test_one_subject_cmmlu_job_from_the_evaluate_tab(page, server):
    page.tab("Evaluate")
    page.type("eval-task", "cmmlu")
    page.type("eval-subjects", "[anatomy]")
    page.type("eval-n-shot", "0")
    page.type("eval-max-samples", "12")
    page.click("eval-start")
    status = page.wait(
        lambda: "queued eval job" in page.text("eval-status") and page.text("eval-status"), 30, "the job"
    )
    job_id = int(status.split()[-1])
    page.wait(lambda: "succeeded" in page.text("eval-progress"), 600, "the evaluation", every=1.0)
    job = server[1].get(job_id)
    score = job.result["score"] if job.result and "score" in job.result else None
    table = page.wait(
        lambda: "cmmlu" in page.text("eval-history") and page.text("eval-history"), 30, "the results table"
    )
    assert job.run in table
    if score is not None:
        assert f"{round(score, 4):g}"[:4] in table
    # the newest runs are compared per subject (here the one run, on its one subject)
    page.wait(
        lambda: page.driver.find_elements("css selector", "#eval-compare canvas, #eval-compare svg"), 30, "the chart"
    )


@pytest.mark.e2e
def test_runs_tab_shows_the_training_run_and_its_loss_curve(page, server):
    job = server[1].list(kinds=["finetune"], statuses=["succeeded"], limit=1)[0]
    page.tab("Runs")
    page.click("runs-refresh")
    page.wait(lambda: server[1].get(job.id).run in page.text("runs-table"), 30, "the run in the table")
    page.wait(
        lambda: page.driver.find_elements("css selector", "#runs-first-plot canvas, #runs-first-plot svg"),
        30,
        "the run's loss curve",
    )


@pytest.mark.e2e
def test_export_merges_the_adapter_in_shards(page, server, workspace):
    from transformers import AutoModelForCausalLM

    queue = server[1]
    job = queue.list(kinds=["finetune"], statuses=["succeeded"], limit=1)[0]
    target = workspace / "merged"
    page.tab("Export")
    page.type("export-adapter", queue.get(job.id).config["output_dir"])
    page.type("export-export-dir", str(target))
    page.type("export-export-max-shard-size", "abc")
    page.click("export-start")
    error = page.wait(lambda: page.text("export-error-export-max-shard-size"), 30, "the refusal")
    assert "export_max_shard_size" in error and "'abc'" in error
    assert not target.exists()
    page.type("export-export-max-shard-size", "200MB")
    page.click("export-start")
    page.wait(lambda: "wrote" in page.text("export-status"), 300, "the export", every=1.0)
    shards = sorted(target.glob("*.safetensors"))
    assert len(shards) >= 2 and all(path.stat().st_size <= 200 * 10**6 for path in shards)
    model = AutoModelForCausalLM.from_pretrained(target)
    assert model.config.model_type == "llama"
