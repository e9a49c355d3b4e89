"""Built-in model loaders (packaged aliases, GGUF files, Hugging Face folders and cached hub ids)."""

from __future__ import annotations

from factory.hookspecs import hookimpl


@hookimpl
def register_loaders(register):
    register("alias", "factory.model.builtin_loaders:AliasLoader", description="models shipped in Python packages")
    register("gguf", "factory.model.builtin_loaders:GGUFLoader", description="a .gguf file, dequantized")
    register(
        "hf", "factory.model.builtin_loaders:HuggingFaceLoader", description="a Hugging Face folder or cached hub id"
    )
