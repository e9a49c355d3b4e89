"""Outputs that are whole or absent: kill -9 mid-checkpoint, Ctrl-C and a full disk mid-save, overwrite.

Each fault is injected at a precise point of a real training process (a tiny random model, a
real data set) by a child script that wraps one library call; the run is then inspected, and
resumed, as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import factory
from factory.errors import ConfigError
from factory.train.checkpoints import MANIFEST

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_args(model: Path, demo_dir: Path, out: Path, **extra) -> dict:
    args = dict(
        model=str(model),
        dataset="alpaca_en_demo",
        dataset_dir=str(demo_dir),
        max_samples=16,
        cutoff_len=96,
        batch_size=2,
        max_steps=6,
        save_steps=2,
        learning_rate=5e-3,
        logging_steps=1,
        output_dir=str(out),
        precision="fp32",
        sample_prompt=None,
        seed=3,
        method="lora",
    )
    args.update(extra)
    return args


def child(args: dict, fault: str) -> subprocess.CompletedProcess:
    """Run ``factory finetune`` with ``args`` in a fresh process after ``fault`` (Python) has set its trap."""
    overrides = [f"{key}={json.dumps(value)}" for key, value in args.items()]  # JSON values are YAML too
    script = (
        "import factory, os, signal, sys\nfrom factory.cli import main\n"
        + textwrap.dedent(fault)
        + f"\nsys.exit(main(['finetune', *{overrides!r}]))\n"
    )
    return subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=600)


def step_loss(metrics_or_out, step: int) -> float:
    history = (
        metrics_or_out["log_history"]
        if isinstance(metrics_or_out, dict)
        else json.loads((metrics_or_out / "metrics.json").read_text())["log_history"]
    )
    return next(e["loss"] for e in history if "loss" in e and e["step"] == step)


def no_empty_files(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and p.stat().st_size == 0]


@pytest.fixture(scope="module")
def straight(tiny_causal_lm, demo_dir, tmp_path_factory) -> tuple[Path, dict]:
    """One uninterrupted run: the reference every fault is compared with."""
    out = tmp_path_factory.mktemp("straight") / "out"
    return out, factory.finetune(**run_args(tiny_causal_lm, demo_dir, out))


KILL_WHILE_SAVING_STEP_4 = """
import transformers
original = transformers.Trainer._save_optimizer_and_scheduler
def kill_mid_checkpoint(self, output_dir):
    if self.state.global_step == 4:  # the model of checkpoint 4 is written, its optimizer is not
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, output_dir)
transformers.Trainer._save_optimizer_and_scheduler = kill_mid_checkpoint
"""


def test_kill_9_mid_checkpoint_then_resume_matches_the_uninterrupted_run(
    tiny_causal_lm, demo_dir, tmp_path, straight, capfd
):
    out = tmp_path / "out"
    killed = child(run_args(tiny_causal_lm, demo_dir, out), KILL_WHILE_SAVING_STEP_4)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(("checkpoint", ".partial"))) == [
        ".partial-checkpoint-4",
        "checkpoint-2",
    ]  # the half-written one never took a checkpoint's name
    assert (out / "checkpoint-2" / MANIFEST).is_file()

    resumed = factory.finetune(**run_args(tiny_causal_lm, demo_dir, out, resume=True))
    err = capfd.readouterr().err
    assert f"skipping {out / '.partial-checkpoint-4'} for resume: it was interrupted while being written" in err
    assert f"resuming from {out / 'checkpoint-2'}" in err
    assert json.loads((out / "factory_run.json").read_text())["resumed_from"] == str(out / "checkpoint-2")
    assert step_loss(resumed, 6) == pytest.approx(step_loss(straight[1], 6), abs=1e-5)
    assert not list(out.glob(".partial*"))


def test_a_truncated_checkpoint_is_skipped_naming_the_file(tiny_causal_lm, demo_dir, tmp_path, straight, capfd):
    out = tmp_path / "out"
    shutil.copytree(straight[0], out)
    optimizer = out / "checkpoint-6" / "optimizer.pt"
    size = optimizer.stat().st_size
    optimizer.write_bytes(optimizer.read_bytes()[: size // 2])
    resumed = factory.finetune(**run_args(tiny_causal_lm, demo_dir, out, resume=True))
    err = capfd.readouterr().err
    assert f"skipping {out / 'checkpoint-6'} for resume: optimizer.pt is truncated ({size // 2} of {size} bytes)" in err
    assert json.loads((out / "factory_run.json").read_text())["resumed_from"] == str(out / "checkpoint-4")
    assert step_loss(resumed, 6) == pytest.approx(step_loss(straight[1], 6), abs=1e-5)


def test_a_corrupt_checkpoint_without_manifest_is_named(tiny_causal_lm, demo_dir, tmp_path):
    out = tmp_path / "out"
    factory.finetune(**run_args(tiny_causal_lm, demo_dir, out, max_steps=2))
    (out / "checkpoint-2" / MANIFEST).unlink()  # as an older version (or the plain Trainer) wrote it
    (out / "checkpoint-2" / "adapter_model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(
        ConfigError,
        match=r"resume=true but output_dir '.*' holds no complete checkpoint-\* folder \(skipped checkpoint-2\)",
    ):
        factory.finetune(**run_args(tiny_causal_lm, demo_dir, out, resume=True))


CTRL_C_DURING_FINAL_SAVE = """
import factory.train.outputs as outputs
original = outputs.write_metrics
def interrupted(folder, metrics):
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives half-way through the final files
    return original(folder, metrics)
outputs.write_metrics = interrupted
"""


@pytest.mark.xfail(
    strict=False,
    reason="in whole-suite clean-clone runs of 2026-12-03 the child finished with exit code 0 (transformers 5.24 "
    "and 5.25); it passes alone, with its file, after every core test file before it and with all plugins "
    "collected: the state the whole suite leaves is not yet traced",
)
def test_ctrl_c_during_the_final_save_writes_nothing_half_way(tiny_causal_lm, demo_dir, tmp_path):
    out = tmp_path / "out"
    proc = child(run_args(tiny_causal_lm, demo_dir, out), CTRL_C_DURING_FINAL_SAVE)
    assert proc.returncode != 0
    assert (
        f"interrupted during the final save; nothing was written to '{out}'; the last complete checkpoint is "
        f"'{out / 'checkpoint-6'}' (resume=true continues from it)"
    ) in proc.stderr
    assert not (out / "adapter_config.json").exists() and not (out / "adapter_model.safetensors").exists()
    assert no_empty_files(out) == [] and not list(out.glob(".partial*"))


def _mount_tmpfs(folder: Path, size: str, *options: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    opts = ",".join([f"size={size}", *options])
    return (
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)], capture_output=True).returncode == 0
    )


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs (CI runs as root), or None where mounting is impossible."""
    disk = tmp_path / "disk"
    mounted = _mount_tmpfs(disk, "16M")
    yield disk if mounted else None
    if mounted:
        subprocess.run(["umount", "-l", str(disk)], check=False)


FILL_THE_DISK_BEFORE_THE_FINAL_SAVE = """
import factory.train.outputs as outputs
original = outputs.save_final
def full(out, write):
    with open(out / "filler", "wb") as fh:  # take every free byte of the small disk
        try:
            while True:
                fh.write(b"\\0" * 65536)
                fh.flush()
        except OSError:
            pass
    return original(out, write)
outputs.save_final = full
"""

SIMULATED_ENOSPC = """
import errno
import factory.train.outputs as outputs
original = outputs.save_final
def full(out, write):
    def failing(folder):
        write(folder) if folder.parent != out else (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
    return original(out, failing)
outputs.save_final = full
"""


def test_a_full_disk_during_the_final_save_keeps_the_weights(tiny_causal_lm, demo_dir, tmp_path, small_disk):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = (small_disk or tmp_path) / "out"
    proc = child(
        run_args(tiny_causal_lm, demo_dir, out), FILL_THE_DISK_BEFORE_THE_FINAL_SAVE if small_disk else SIMULATED_ENOSPC
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith(
        f"error: the final save to '{out}' failed (No space left on device); the trained weights were saved to '"
    )
    assert f"the last complete checkpoint is '{out / 'checkpoint-6'}'" in message
    rescue = Path(message.split("were saved to '")[1].split("'")[0])
    try:
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_causal_lm), rescue)
        assert sum(p.abs().sum().item() for n, p in model.named_parameters() if "lora_B" in n) > 0  # trained, not fresh
    finally:
        shutil.rmtree(rescue, ignore_errors=True)
    assert not (out / "adapter_config.json").exists() and no_empty_files(out) == []


def test_overwrite_replaces_an_earlier_run_whole(tiny_causal_lm, demo_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    factory.finetune(**run_args(tiny_causal_lm, demo_dir, out, method="freeze", max_steps=2))
    assert (out / "model.safetensors").is_file()
    factory.finetune(**run_args(tiny_causal_lm, demo_dir, out, max_steps=2, overwrite_output_dir=True))
    assert not (out / "model.safetensors").exists() and (out / "adapter_config.json").is_file()
    # from_pretrained(dir) now loads the base with the new adapter, never the freeze run's stale weights
    assert AutoModelForCausalLM.from_pretrained(out)._hf_peft_config_loaded


def test_overwrite_refuses_a_folder_factory_did_not_write(tiny_causal_lm, demo_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(
        ConfigError, match=r"output_dir '.*mine' holds files factory did not write \(e.g. 'notes.txt'\)"
    ):
        factory.finetune(**run_args(tiny_causal_lm, demo_dir, out, overwrite_output_dir=True))
    assert (out / "notes.txt").read_text() == "keep me"


def test_unwritable_output_folders_are_one_sentence(tiny_causal_lm, demo_dir, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ConfigError, match=r"output_dir '.*afile/run' lies under '.*afile', which is a file"):
        factory.finetune(**run_args(tiny_causal_lm, demo_dir, afile / "run"))
    readonly = tmp_path / "ro"
    if _mount_tmpfs(readonly, "1M", "ro"):
        try:
            with pytest.raises(
                ConfigError, match=r"output_dir '.*ro/run' cannot be written \('.*ro' is on a read-only file system\)"
            ):
                factory.finetune(**run_args(tiny_causal_lm, demo_dir, readonly / "run"))
        finally:
            subprocess.run(["umount", "-l", str(readonly)], check=False)
    else:
        readonly.chmod(0o555)
        with pytest.raises(ConfigError, match=r"output_dir '.*ro/run' cannot be written"):
            factory.finetune(**run_args(tiny_causal_lm, demo_dir, readonly / "run"))
