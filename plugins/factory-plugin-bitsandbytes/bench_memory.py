"""Peak memory of QLoRA against plain LoRA: the same short SFT run, each in a fresh process.

    python bench_memory.py                       # SmolLM2-135M-Instruct, 4 steps each
    python bench_memory.py --model PATH --steps 8

Each run is ``factory.finetune`` with LoRA (rank 8, every linear layer) on alpaca_en_demo at
batch 2 x 128 tokens; the methods differ only in ``quantization``. The figure is the process's
peak resident set size (loading, training and saving included), read from ``getrusage``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "llamafactory-demo"
RUNS = {"lora (bf16 base)": None, "qlora nf4": "bnb-4bit", "lora on 8-bit": "bnb-8bit"}


def run(model: str, quantization: str | None, steps: int) -> dict:
    import factory

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        factory.finetune(
            model=model,
            quantization=quantization,
            method="lora",
            dataset="alpaca_en_demo",
            dataset_dir=str(DEMO_DIR),
            max_samples=16,
            cutoff_len=128,
            batch_size=2,
            max_steps=steps,
            logging_steps=1,
            output_dir=out,
            precision="bf16",
            sample_prompt=None,
        )
        seconds = time.perf_counter() - start
    return {"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run(args.model, args.one or None, args.steps)))
        return
    print(f"{'run':<18} {'peak RSS MiB':>13} {'seconds':>8}")
    for label, quantization in RUNS.items():
        proc = subprocess.run(
            [sys.executable, __file__, "--model", args.model, "--steps", str(args.steps), "--one", quantization or ""],
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{label:<18} {row['peak_mib']:>13.0f} {row['seconds']:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
