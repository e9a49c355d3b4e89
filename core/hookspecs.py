"""The hook contract between the factory core and its plugins.

There is one hook per *kind* of method. A plugin implements ``register_<kind>(register)`` and
calls ``register(name, implementation, *, requires=None, options=None, section=None,
description="")`` once per implementation it offers:

- ``name``: what users write in the config (``method: lora``), unique within the kind.
- ``implementation``: the object, or a ``"module:attribute"`` string that is imported only
  when a run uses it (so listing plugins never imports a heavy backend). A class is
  instantiated once without arguments on first use (engines excepted: the core constructs them).
- ``requires``: a :class:`factory.Requires` (Python packages, device, minimum CUDA compute
  capability); ``factory plugins list`` and config validation use it to say why an
  implementation cannot run here.
- ``options``: a pydantic model of the implementation's own settings, read from the config
  section ``section`` (default: ``name``), e.g. ``lora.rank=16``.

What the *implementation* must provide is its kind's contract in :mod:`factory.contracts`
(summarised per hook below, tabulated in docs/plugins.md); registration checks it. The core
calls these members; everything not listed is up to the plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "factory"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[..., Any]


@hookspec
def register_loaders(register: Register) -> None:
    """Model loaders.

    Implementation: an object with ``can_load(source: str) -> bool`` (is ``source`` something
    this loader understands: a folder, a file, a hub id, an alias) and
    ``load(source: str, cfg: RunConfig, model_kwargs: dict) -> tuple[model, tokenizer]``,
    returning a ``transformers`` causal LM and its tokenizer. ``model_kwargs`` carries what
    patches and quantizers put there (``torch_dtype``, ``attn_implementation``,
    ``quantization_config``...). ``model.loader: auto`` asks each loader in turn.
    """


@hookspec
def register_quantizers(register: Register) -> None:
    """Quantization backends, chosen with ``quantization: NAME``.

    Implementation: an object with ``before_load(cfg, model_kwargs: dict) -> None`` (add e.g. a
    ``quantization_config``), ``after_load(model, cfg) -> model`` (k-bit preparation, guards)
    and ``export(model, tokenizer, output_dir, cfg) -> None``, which raises
    :class:`factory.PluginError` with a clear sentence where the backend cannot export.
    Optionally ``check_trainable(cfg) -> None``, called before a training run loads anything,
    raising :class:`factory.PluginError` where the backend cannot train (inference-only kernels).
    """


@hookspec
def register_adapters(register: Register) -> None:
    """Fine-tuning methods, chosen with ``method: NAME`` (full, freeze, lora, dora...).

    Implementation: an object with ``apply(model, cfg) -> model`` that leaves exactly the
    parameters to train with ``requires_grad=True``, ``save(model, output_dir) -> None``
    writing a Hugging Face format (PEFT adapter or safetensors weights), and optionally
    ``param_groups(model, cfg) -> list[dict]`` for per-group learning rates (LoRA+),
    ``load(model, adapter_dir, cfg) -> model`` attaching a saved adapter for inference,
    ``continue_from(model, adapter_dir, cfg) -> model`` attaching one with its weights trainable
    (``adapter: DIR`` in a training run; methods without it refuse that setting) and
    ``merge(model) -> model`` for export.
    """


@hookspec
def register_optimizers(register: Register) -> None:
    """Optimizers, chosen with ``optimizer: NAME`` (adamw, galore, badam...).

    Implementation: an object with ``create(model, cfg, param_groups) -> torch.optim.Optimizer``
    where ``param_groups`` is the adapter's grouping of trainable parameters, and optionally
    ``callbacks(cfg) -> list[TrainerCallback]`` and ``check_trainable(cfg) -> None``, called before a
    training run loads anything, raising :class:`factory.ConfigError` for settings the optimizer cannot
    honour (gradient accumulation or clipping for optimizers that step inside the backward pass).
    """


@hookspec
def register_aligners(register: Register) -> None:
    """Data set formats (alpaca, sharegpt, openai, preference, kto, text...).

    Implementation: an object with ``align(row: dict, spec: DatasetSpec) -> dict`` mapping one
    raw row to factory's standard record (``messages``, ``system``, ``tools``, ``chosen``,
    ``rejected``, ``label``, ``text``) and ``columns(spec) -> set[str]``, the raw columns it
    reads, so a missing column is reported before any work is done.
    """


@hookspec
def register_data_kinds(register: Register) -> None:
    """Data kinds: what a stage trains on (its ``data_kind``: pretrain, supervised, pairwise, kto...).

    Implementation: an object with ``columns`` (the columns of a tokenized row, name -> ``ids``,
    ``bool`` or ``float``), ``tokenize(batch, *, tokenizer, template, options) -> dict`` (a batched
    ``datasets.map`` function from standard records to those columns plus ``_status`` and
    ``_length``; ``factory.plugin_api.ConversationKind`` does the work for conversation data) and
    ``collator(tokenizer, *, packing, flatten, restarts)`` making batches of the rows; optionally
    ``packable`` (rows may be packed), ``chunks`` (texts are cut into ``cutoff_len`` chunks),
    ``detect(record) -> int`` (how specifically it claims a record, for ``factory data preview``)
    and ``pieces(row)`` (what preview shows of a row).
    """


@hookspec
def register_templates(register: Register) -> None:
    """Chat templates, chosen with ``template: NAME``.

    Implementation: a :class:`factory.data.template.Template` (or an object with the same
    ``render(messages, system, tools, add_generation_prompt) -> list[Segment]`` and
    ``stop_words``), where each segment is ``(text, trainable)``.
    """


@hookspec
def register_patches(register: Register) -> None:
    """Model patches (attention implementations, fused kernels), listed in ``patches: [...]``.

    Implementation: an object with ``before_load(cfg, model_kwargs: dict) -> None`` and
    ``after_load(model, cfg) -> model``; either may be a no-op.
    """


@hookspec
def register_stages(register: Register) -> None:
    """Training stages, chosen with ``stage: NAME`` (pt, sft, rm, dpo, kto, orpo, ppo...).

    Implementation: an object with ``data_kind: str`` (the registered data kind it trains on:
    ``pretrain``, ``supervised``, or one a plugin registers such as ``pairwise``) and
    ``run(cfg, manager) -> dict`` that trains and returns the final metrics.
    """


@hookspec
def register_engines(register: Register) -> None:
    """Inference engines, chosen with ``engine: NAME`` (transformers, vllm...).

    Implementation: a subclass of :class:`factory.infer.base.Engine`, constructed as
    ``Engine(cfg, manager)`` (it loads ``cfg.model`` + ``cfg.adapter``), that implements
    ``stream(request: GenerationRequest) -> TextStream``: queue the request and return at once
    a stream of text deltas (iterable, or ``async for``), whose ``result`` holds a
    ``GenerationResult(text, finish_reason, prompt_tokens, completion_tokens)`` at the end; a
    bad request raises ``RequestError`` (``PromptTooLongError`` past the context). It sets
    ``template`` (from ``factory.data.template.get_template``), ``tokenizer`` and
    ``context_length``, stops generating when the consumer calls ``stream.close()``, and may
    override ``submit(requests)`` (queue several together), ``stats()`` and ``close()``.
    The base class provides ``generate(requests) -> list[GenerationResult]`` on top of these.
    """


@hookspec
def register_evaluators(register: Register) -> None:
    """Evaluators, chosen with ``task: NAME`` (mmlu, cmmlu, ceval, bleu-rouge...).

    Implementation: an object with
    ``evaluate(cfg, manager, *, loaded=None, engine=None, progress=True) -> EvalResult``
    (:class:`factory.eval.results.EvalResult`: ``task``, headline ``metric``, ``overall``,
    ``subjects`` and ``categories`` as :class:`~factory.eval.results.Scores`, per-item
    ``items``, ``settings``, ``output_file``). ``loaded`` (a ``LoadedModel``) or ``engine`` (an
    inference engine) is what the caller already holds; an evaluator that needs one and gets
    none loads it from ``cfg`` itself (logit scorers load the model, generating ones an engine).
    ``progress`` shows a progress bar on stderr when true; it may instead be a callable
    ``progress(done, total)`` (items scored so far, items in all), called after every batch,
    which may raise to stop the evaluation there (a cancelled job does). :func:`factory.eval.evaluate`
    calls it and records the result in the results store.
    """


@hookspec
def register_callbacks(register: Register) -> None:
    """Training callbacks, listed in ``callbacks: [...]``.

    Implementation: a callable ``create(cfg) -> transformers.TrainerCallback``.
    """


@hookspec
def register_commands(register: Register) -> None:
    """CLI commands, run as ``factory NAME ...`` (the web UI plugin adds ``factory webui`` this way).

    Implementation: an object with ``help: str``, ``add_arguments(parser)`` declaring its
    arguments on an ``argparse`` sub-parser, and ``run(args) -> int`` returning the exit code.
    A name may not shadow a built-in command.
    """


KINDS: tuple[str, ...] = tuple(
    name.removeprefix("register_") for name in list(globals()) if name.startswith("register_")
)

# What users call each kind in the config and in messages.
LABELS: dict[str, str] = {
    "loaders": "loader",
    "quantizers": "quantization",
    "adapters": "method",
    "optimizers": "optimizer",
    "aligners": "dataset format",
    "data_kinds": "data kind",
    "templates": "template",
    "patches": "patch",
    "stages": "stage",
    "engines": "engine",
    "evaluators": "task",
    "callbacks": "callback",
    "commands": "command",
}
