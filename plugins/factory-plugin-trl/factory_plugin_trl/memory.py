"""Measure peak memory of preference runs with and without model sharing.

    python -m factory_plugin_trl.memory --dataset-dir ../shared/data/llamafactory-demo [--model ALIAS] [--steps 2]

Each variant is a short LoRA run in a fresh process whose peak resident memory (``ru_maxrss``)
is its result, so variants never see each other's allocations:

- ``dpo``: one copy of the weights; the reference log-probabilities are computed once before training;
- ``ppo shared``: policy, value and reward are adapters of one base, the reference is the base;
- ``ppo separate``: policy, reference, value and reward are four models.

PPO needs a reward model: a one-step rm run is trained first (not measured). Prints a table and
writes ``memory.json`` in the work folder.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

MARK = "FACTORY_MEMORY "


def child(args: dict[str, Any]) -> None:
    """Run one variant and print this process's peak resident memory (MB) and the run's final loss."""
    import factory

    metrics = factory.finetune(**args)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(MARK + json.dumps({"peak_mb": round(peak_mb, 1), "train_loss": metrics.get("train_loss")}), flush=True)


def run_child(args: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "factory_plugin_trl.memory", "--child", json.dumps(args)],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"variant failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix(MARK))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dataset-dir", required=False)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="where runs and memory.json go (default: a temporary folder)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.child:
        child(json.loads(opts.child))
        return
    if not opts.dataset_dir:
        parser.error("--dataset-dir is required (the folder holding dpo_en_demo and kto_en_demo)")

    work = Path(opts.workdir or tempfile.mkdtemp(prefix="factory-trl-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    common = dict(
        model=opts.model,
        method="lora",
        dataset_dir=str(Path(opts.dataset_dir).resolve()),
        max_samples=16,
        cutoff_len=256,
        batch_size=2,
        max_steps=opts.steps,
        logging_steps=1,
        seed=0,
        overwrite_output_dir=True,
    )
    rm_dir = work / "rm"
    run_child({**common, "stage": "rm", "dataset": "dpo_en_demo", "max_steps": 1, "output_dir": str(rm_dir)})

    ppo = {"reward_model": str(rm_dir), "max_new_tokens": 32}
    variants = {
        "dpo": {"stage": "dpo", "dataset": "dpo_en_demo"},
        "ppo shared": {"stage": "ppo", "dataset": "kto_en_demo", "ppo": {**ppo, "share_base": True}},
        "ppo separate": {"stage": "ppo", "dataset": "kto_en_demo", "ppo": {**ppo, "share_base": False}},
    }
    results = {}
    for name, extra in variants.items():
        results[name] = run_child({**common, **extra, "output_dir": str(work / name.replace(" ", "-"))})
        print(f"{name:14s} peak {results[name]['peak_mb']:8.1f} MB", flush=True)
    saved = results["ppo separate"]["peak_mb"] - results["ppo shared"]["peak_mb"]
    print(f"ppo: sharing the base saves {saved:.0f} MB of peak memory")
    (work / "memory.json").write_text(
        json.dumps({"model": opts.model, "steps": opts.steps, "results": results}, indent=2)
    )
    print(f"written to {work / 'memory.json'}")


if __name__ == "__main__":
    main()
