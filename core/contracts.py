"""The contract of every plugin kind: what an implementation must provide, and what it may.

Each kind is a :class:`typing.Protocol` whose members carry their documentation; members the
core calls only when present are marked :func:`optional`. :func:`problems` checks an object
against its kind's contract (presence, callability, and that each method accepts the arguments
the core passes), so a plugin learns at registration, or when a lazily imported implementation is
first loaded, exactly which member is missing. ``docs/plugins.md`` carries the table
:func:`markdown` renders from these classes, and a test fails when the two differ, so the guide
cannot drift from the code.

This module imports nothing heavy: plugins' registration hooks run it at listing time.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def optional(member: F) -> F:
    """Mark a contract member the core calls only when the implementation has it."""
    member.__contract_optional__ = True  # type: ignore[attr-defined]
    return member


class Attribute:
    """A data member of a contract (documented, and optional when it has a default)."""

    def __init__(self, annotation: str, doc: str, *, default: Any = inspect.Parameter.empty) -> None:
        self.annotation, self.doc, self.default = annotation, doc, default

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty


# -- the kinds ------------------------------------------------------------------------------------


class Loader(Protocol):
    """Model loaders (``loader: NAME``; under ``auto`` every loader is asked, highest priority first)."""

    priority = Attribute("int", "order under `loader: auto` (higher is asked first; ties by name)", default=0)

    def can_load(self, source: str) -> bool:
        """Whether ``source`` (a folder, a file, a hub id, an alias) is something this loader reads; no side effects."""

    def load(self, source: str, cfg: Any, model_kwargs: dict) -> tuple[Any, Any]:
        """The transformers causal LM and its tokenizer; ``model_kwargs`` holds what patches and quantizers set, and ``use_kernels: False`` where transformers has Hub kernels (from 5.25 on by default and re-applied on ``model.train()``, replacing the forwards factory and patches give the layers); pass it on."""


class Quantizer(Protocol):
    """Quantization backends (``quantization: NAME``)."""

    def before_load(self, cfg: Any, model_kwargs: dict) -> None:
        """Add what loading needs (e.g. a ``quantization_config``) to ``model_kwargs``."""

    def after_load(self, model: Any, cfg: Any) -> Any:
        """The loaded model made ready (k-bit preparation, training guards)."""

    def export(self, model: Any, tokenizer: Any, output_dir: str, cfg: Any) -> None:
        """Write the quantized model, or raise PluginError in one sentence where the backend cannot."""

    @optional
    def check_trainable(self, cfg: Any) -> None:
        """Raise PluginError before anything loads where this backend cannot train (inference-only kernels)."""


class Adapter(Protocol):
    """Fine-tuning methods (``method: NAME``)."""

    trains_all_weights = Attribute(
        "bool",
        "every weight trains (full tuning): the model loads in fp32 instead of the compute precision",
        default=False,
    )

    def apply(self, model: Any, cfg: Any) -> Any:
        """The model ready to train: exactly the parameters to train have ``requires_grad=True``."""

    def save(self, model: Any, output_dir: str) -> None:
        """Write the trained weights in a Hugging Face format (a PEFT adapter or safetensors weights)."""

    @optional
    def param_groups(self, model: Any, cfg: Any) -> list[dict]:
        """Optimizer parameter groups, for per-group learning rates (LoRA+)."""

    @optional
    def load(self, model: Any, adapter_dir: str, cfg: Any) -> Any:
        """The model with a saved adapter attached for inference (chat, serve, eval, export)."""

    @optional
    def continue_from(self, model: Any, adapter_dir: str, cfg: Any) -> Any:
        """The model with a saved adapter attached trainable (``adapter: DIR`` in a training run)."""

    @optional
    def merge(self, model: Any) -> Any:
        """The adapter merged into the base weights, for ``factory export``."""


class Optimizer(Protocol):
    """Optimizers (``optimizer: NAME``)."""

    def create(self, model: Any, cfg: Any, param_groups: list[dict]) -> Any:
        """A ``torch.optim.Optimizer`` over ``param_groups`` (the method's grouping of trainable parameters)."""

    @optional
    def callbacks(self, cfg: Any) -> list:
        """Trainer callbacks the optimizer needs (e.g. a block switcher)."""

    @optional
    def check_trainable(self, cfg: Any) -> None:
        """Raise ConfigError before anything loads for a setting the optimizer cannot honour (gradient accumulation or clipping for one that steps inside backward)."""


class Aligner(Protocol):
    """Data set formats: one raw row to factory's standard record."""

    def align(self, row: dict, spec: Any) -> dict:
        """The standard record (messages, system, tools, chosen, rejected, label, text) of one raw row."""

    def columns(self, spec: Any) -> set:
        """The raw columns ``align`` reads, so a missing one is named before any work is done."""

    @optional
    def detect(self, column_names: list, first_row: Any) -> dict | None:
        """For a data set given by path: the column mapping when this format recognises the columns, else None."""


class DataKind(Protocol):
    """Data kinds (a stage's ``data_kind``): standard records -> tokenized rows -> batches."""

    columns = Attribute(
        "dict[str, str]", "the columns of a tokenized row: name -> `ids` (int32 token lists), `bool` or `float`"
    )
    packable = Attribute("bool", "rows may be packed several to a `cutoff_len` row (`packing: true`)", default=False)
    chunks = Attribute(
        "bool", "texts are cut into `cutoff_len` chunks instead of truncated; packing on by default", default=False
    )

    def tokenize(self, batch: dict, *, tokenizer: Any, template: Any, options: Any) -> dict:
        """Batched `datasets.map` function: records -> `columns` plus `_status` (`ok`, `truncated`, `dropped:<why>`) and `_length`."""

    def collator(self, tokenizer: Any, *, packing: bool, flatten: bool, restarts: bool) -> Any:
        """The batch builder (`flatten`: one padding-free row for varlen attention; `restarts`: the model honours restarting positions)."""

    @optional
    def detect(self, record: dict) -> int:
        """How specifically a standard record is data of this kind (0: not at all); `factory data preview` takes the highest."""

    @optional
    def pieces(self, row: dict) -> list:
        """`(title, ids, labels)` parts of a tokenized row, as `factory data preview` shows them."""


class ChatTemplate(Protocol):
    """Chat templates (``template: NAME``)."""

    stop_words = Attribute("list[str]", "strings that end an answer at inference")

    def render(
        self,
        messages: Sequence[Mapping],
        *,
        system: str = "",
        tools: Any = "",
        add_generation_prompt: bool = False,
        tokenizer: Any = None,
    ) -> list:
        """The conversation as ``Segment(text, trainable)`` pieces; trained spans are marked, the text is the family's."""


class Patch(Protocol):
    """Model patches (``patches: [NAME, ...]``): attention implementations, fused kernels."""

    def before_load(self, cfg: Any, model_kwargs: dict) -> Any:
        """Set loading options in ``model_kwargs`` (a patch that wants transformers' Hub kernels sets ``use_kernels`` back to True); return a ``ModelFacts`` of decisions and of what it replaces (or None); never write cfg."""

    def after_load(self, model: Any, cfg: Any) -> Any:
        """The loaded model, patched."""


class Stage(Protocol):
    """Training stages (``stage: NAME``)."""

    data_kind = Attribute(
        "str", "the registered data kind the stage trains on (pretrain, supervised, or a plugin's such as pairwise)"
    )

    def run(self, cfg: Any, manager: Any) -> dict:
        """Train and return the final metrics."""

    @optional
    def check(self, cfg: Any, manager: Any) -> None:
        """Refuse, before any model loads, a config this stage cannot train (one sentence)."""


class Engine(Protocol):
    """Inference engines (``engine: NAME``): a subclass of ``factory.plugin_api.Engine``, constructed per use."""

    def stream(self, request: Any) -> Any:
        """Queue ``request`` and return at once a ``TextStream`` of text deltas whose ``result`` ends it."""


class Evaluator(Protocol):
    """Evaluators (``task: NAME``)."""

    def evaluate(self, cfg: Any, manager: Any, *, loaded: Any = None, engine: Any = None, progress: bool = True) -> Any:
        """An ``EvalResult``; ``loaded``/``engine`` is what the caller already holds, else load from cfg."""


class Callback(Protocol):
    """Training callbacks (``callbacks: [NAME, ...]``)."""

    def create(self, cfg: Any) -> Any:
        """A ``transformers.TrainerCallback`` for this run."""


class Command(Protocol):
    """CLI commands (``factory NAME ...``), added by any plugin."""

    help = Attribute("str", "one line for `factory --help`")

    def add_arguments(self, parser: Any) -> None:
        """Declare the command's arguments on its ``argparse`` sub-parser."""

    def run(self, args: Any) -> int:
        """Run with the parsed arguments; the exit code (raise FactoryError for a user's mistake)."""


CONTRACTS: dict[str, type] = {
    "loaders": Loader,
    "quantizers": Quantizer,
    "adapters": Adapter,
    "optimizers": Optimizer,
    "aligners": Aligner,
    "data_kinds": DataKind,
    "templates": ChatTemplate,
    "patches": Patch,
    "stages": Stage,
    "engines": Engine,
    "evaluators": Evaluator,
    "callbacks": Callback,
    "commands": Command,
}


# -- reading and checking the contracts -----------------------------------------------------------


def members(contract: type) -> list[tuple[str, Any]]:
    """``(name, member)`` of a contract in definition order: methods and :class:`Attribute` s."""
    return [
        (name, value)
        for name, value in vars(contract).items()
        if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, Attribute))
    ]


def is_required(member: Any) -> bool:
    if isinstance(member, Attribute):
        return member.required
    return not getattr(member, "__contract_optional__", False)


def problems(kind: str, obj: Any) -> list[str]:
    """What ``obj`` lacks to fulfil the contract of ``kind`` (empty when it fulfils it)."""
    contract = CONTRACTS[kind]
    found = []
    if kind == "engines":
        from factory.infer.base import Engine as EngineBase

        if not (isinstance(obj, type) and issubclass(obj, EngineBase)):
            return [f"is a {type(obj).__name__}, not a subclass of factory.plugin_api.Engine"]
    for name, member in members(contract):
        present = hasattr(obj, name)
        if not present:
            if is_required(member):
                found.append(f"has no {'attribute' if isinstance(member, Attribute) else 'method'} '{name}'")
            continue
        if isinstance(member, Attribute):
            continue
        value = getattr(obj, name)
        if not callable(value):
            found.append(f"'{name}' is a {type(value).__name__}, not a method")
            continue
        mismatch = _arity(member, value, unbound=isinstance(obj, type))
        if mismatch:
            found.append(f"'{name}' {mismatch}")
    return found


def _arity(member: Callable[..., Any], value: Callable[..., Any], *, unbound: bool) -> str | None:
    """Whether ``value`` accepts the arguments the core passes to ``member`` (positional, and keyword-only by name)."""
    expected = list(inspect.signature(member).parameters.values())[1:]  # without self
    positional = [p for p in expected if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keywords = {p.name: None for p in expected if p.kind == p.KEYWORD_ONLY}
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):  # builtins without a signature: trust them
        return None
    args: list[Any] = [None] * (len(positional) + (1 if unbound else 0))
    try:
        signature.bind(*args, **keywords)
    except TypeError:
        wanted = ", ".join([p.name for p in positional] + [f"{k}=" for k in keywords])
        return f"must accept ({wanted}), but its signature is {signature}"
    return None


def markdown() -> str:
    """The contract table of docs/plugins.md, generated from the classes above."""
    lines = []
    for kind, contract in CONTRACTS.items():
        lines += [f"### {kind}: `{contract.__name__}`", "", (inspect.getdoc(contract) or "").strip(), ""]
        lines += ["| member | required | what the core expects |", "| --- | --- | --- |"]
        for name, member in members(contract):
            if isinstance(member, Attribute):
                shown = f"`{name}: {member.annotation}`"
                doc = member.doc + ("" if member.required else f" (default `{member.default!r}`)")
            else:
                params = list(inspect.signature(member).parameters.values())[1:]
                shown = f"`{name}({', '.join(p.name if p.kind != p.KEYWORD_ONLY else f'{p.name}=' for p in params)})`"
                doc = (inspect.getdoc(member) or "").replace("\n", " ")
            lines.append(f"| {shown} | {'yes' if is_required(member) else 'no'} | {doc} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


GENERATED_START = "<!-- generated from core/contracts.py by factory.contracts.markdown(); tests/test_contracts.py keeps it in sync -->\n"
GENERATED_END = "<!-- end of generated contracts -->"


def write_guide(path: str) -> bool:
    """Regenerate the contract table in the plugin guide at ``path``; returns whether it changed (``nox -s docs``)."""
    from pathlib import Path

    guide = Path(path)
    text = guide.read_text(encoding="utf-8")
    start = text.index(GENERATED_START) + len(GENERATED_START)
    end = text.index(GENERATED_END)
    updated = text[:start] + markdown() + text[end:]
    guide.write_text(updated, encoding="utf-8")
    return updated != text
