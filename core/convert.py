"""``factory convert``: a config (a LLaMA-Factory YAML, or factory's flat form) written in factory's grouped form.

Only the keys the source sets are written, so the file stays as short as the original; loading it
gives the same :class:`~factory.config.RunConfig` as loading the source (a test checks).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from factory import lf_compat
from factory.config import group_keys, load_config, read_config_file


def native(source: str | os.PathLike[str]) -> dict[str, Any]:
    """The grouped factory config of ``source`` (validated, so a refused key stops here)."""
    data = read_config_file(source)
    load_config(source)  # every key and value checked as a run would check them
    flat = lf_compat.translate(data) if lf_compat.is_llamafactory(data) else data
    return group_keys(flat)


def command(config: dict[str, Any]) -> str:
    """The factory command that runs a converted config: export for a merge YAML, predict for a predict YAML."""
    if "export" in config:
        return "export"
    return "predict" if config.get("eval", {}).get("task") == "bleu-rouge" else "finetune"


def convert(source: str | os.PathLike[str], output: str | os.PathLike[str] | None = None) -> tuple[str, str]:
    """The grouped YAML of ``source`` (written to ``output`` when given) and the command that runs it."""
    config = native(source)
    run = command(config)
    header = f"# factory config converted from {source} by factory convert\n"
    if run != "finetune":
        header += f"# run it with factory {run} {output or 'THIS.yaml'}\n"
    text = header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    if output is not None:
        Path(output).write_text(text, encoding="utf-8")
    return text, run
