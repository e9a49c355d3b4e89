"""The built-in stages on the Hugging Face Trainer: pt (plain text) and sft (conversations)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from factory.config import RunConfig
from factory.plugins import PluginManager


@dataclass(frozen=True)
class TrainerStage:
    """A stage that is the shared Trainer run over one kind of tokenized data."""

    data_kind: str
    show_sample: bool = False

    def run(self, cfg: RunConfig, manager: PluginManager) -> dict[str, Any]:
        from factory.train import outputs
        from factory.train.distributed import weights_sharded
        from factory.train.run import run_training

        run = run_training(cfg, manager, self.data_kind)
        if run.trainer.is_world_process_zero():
            if self.show_sample and cfg.sample_prompt and weights_sharded(run.trainer):
                # One rank cannot generate with ZeRO-3's partitioned weights (the others have finished).
                print(f"factory: no sample answer under ZeRO-3; chat with the outputs in {run.output_dir} instead")
            elif self.show_sample and cfg.sample_prompt:
                from factory.infer.generate import chat_reply

                answer = chat_reply(
                    run.model,
                    run.tokenizer,
                    run.template,
                    [{"role": "user", "content": cfg.sample_prompt}],
                    system=cfg.system,
                    max_new_tokens=64,
                )
                run.metrics["sample"] = {"prompt": cfg.sample_prompt, "answer": answer}
                outputs.write_metrics(run.output_dir, run.metrics)
                print(f"\n{cfg.sample_prompt}\n> {answer}")
            print(f"\nfactory: outputs written to {run.output_dir}")
        return run.metrics


PRETRAIN = TrainerStage("pretrain")
SUPERVISED = TrainerStage("supervised", show_sample=True)
