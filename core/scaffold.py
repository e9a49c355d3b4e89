"""``factory plugins new NAME --kind KIND``: a plugin distribution to start from.

It writes ``factory-plugin-NAME/`` with a ``pyproject.toml`` declaring the ``factory`` entry point,
a package whose hook registers one implementation of KIND (a small working one that fulfils the
kind's contract in :mod:`factory.contracts`), a README and a test that passes once the folder is
installed (``pip install -e``). The implementations are data below, one per kind; a test
scaffolds every kind and checks each against its contract.
"""

from __future__ import annotations

import re
from pathlib import Path

from factory.contracts import CONTRACTS
from factory.errors import ConfigError, did_you_mean, one_of

_NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")

# kind -> the implementation module's body: it defines ``Impl`` (``IMPL`` is an instance, or the
# class for engines, which are constructed per use); ``{name}`` becomes what users write in configs.
IMPLEMENTATIONS: dict[str, str] = {
    "loaders": '''
class Impl:
    """Reads ``{name}:PATH``: a Hugging Face folder behind a prefix of its own."""

    priority = 0

    def can_load(self, source: str) -> bool:
        return source.startswith("{name}:")

    def load(self, source: str, cfg, model_kwargs: dict):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = source.removeprefix("{name}:")
        return AutoModelForCausalLM.from_pretrained(path, **model_kwargs), AutoTokenizer.from_pretrained(path)
''',
    "quantizers": '''
class Impl:
    """Leaves the weights as they are: replace before_load with your backend's quantization_config."""

    def before_load(self, cfg, model_kwargs: dict) -> None:
        pass

    def after_load(self, model, cfg):
        return model

    def export(self, model, tokenizer, output_dir: str, cfg) -> None:
        model.save_pretrained(output_dir, safe_serialization=True)
        tokenizer.save_pretrained(output_dir)
''',
    "adapters": '''
class Impl:
    """Trains the normalisation weights only (a tiny method to start from)."""

    def apply(self, model, cfg):
        for name, param in model.named_parameters():
            param.requires_grad = "norm" in name
        return model

    def save(self, model, output_dir: str) -> None:
        model.save_pretrained(output_dir, safe_serialization=True)
''',
    "optimizers": '''
class Impl:
    """Plain SGD with momentum over the method's parameter groups."""

    def create(self, model, cfg, param_groups: list):
        import torch

        return torch.optim.SGD(param_groups, lr=cfg.learning_rate, momentum=0.9)
''',
    "aligners": '''
class Impl:
    """Rows of ``question`` and ``answer`` columns as one user turn and one assistant turn."""

    def align(self, row: dict, spec) -> dict:
        return {
            "messages": [
                {"role": "user", "content": row["question"]},
                {"role": "assistant", "content": row["answer"]},
            ]
        }

    def columns(self, spec) -> set:
        return {"question", "answer"}
''',
    "data_kinds": '''
class Collator:
    """Right-padded batches of ``input_ids`` and ``labels``."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, features: list) -> dict:
        import torch

        from factory.plugin_api import pad

        length = max(len(f["input_ids"]) for f in features)
        return {
            "input_ids": torch.from_numpy(pad([f["input_ids"] for f in features], self.pad_id, length)),
            "labels": torch.from_numpy(pad([f["labels"] for f in features], -100, length)),
            "attention_mask": torch.from_numpy(pad([[1] * len(f["input_ids"]) for f in features], 0, length)),
        }


class Impl:
    """Each plain text as one row trained on every token, cut at ``cutoff_len`` (no chunking, no packing)."""

    columns = {"input_ids": "ids", "labels": "ids"}
    packable = False
    chunks = False

    def tokenize(self, batch: dict, *, tokenizer, template, options) -> dict:
        out = {"input_ids": [], "labels": [], "_status": [], "_length": []}
        for text in batch["text"]:
            ids = tokenizer(text or "", add_special_tokens=False)["input_ids"]
            out["_length"].append(len(ids))
            status = "dropped:empty text" if not ids else "truncated" if len(ids) > options.cutoff_len else "ok"
            ids = ids[: options.cutoff_len]
            out["input_ids"].append(ids)
            out["labels"].append(list(ids))
            out["_status"].append(status)
        return out

    def collator(self, tokenizer, *, packing: bool, flatten: bool, restarts: bool):
        from factory.plugin_api import pad_token_id

        return Collator(pad_token_id(tokenizer))
''',
    "templates": '''
class Impl:
    """``User: ...`` / ``Assistant: ...`` turns; the assistant's text is what trains."""

    stop_words = ["\\nUser:"]

    def render(self, messages, *, system="", tools="", add_generation_prompt=False, tokenizer=None) -> list:
        from factory.plugin_api import Segment

        segments = [Segment(f"System: {system}\\n", False)] if system else []
        for message in messages:
            if message["role"] == "assistant":
                segments += [Segment("Assistant: ", False), Segment(message["content"] + "\\n", True)]
            else:
                segments.append(Segment(f"User: {message['content']}\\n", False))
        if add_generation_prompt:
            segments.append(Segment("Assistant: ", False))
        return segments
''',
    "patches": '''
class Impl:
    """Changes nothing yet: set loading options in before_load, patch modules in after_load."""

    def before_load(self, cfg, model_kwargs: dict):
        return None

    def after_load(self, model, cfg):
        return model
''',
    "stages": '''
class Impl:
    """Supervised fine-tuning through the core's sft stage: change run() to train your way."""

    data_kind = "supervised"

    def run(self, cfg, manager) -> dict:
        return manager.load("stages", "sft").run(cfg, manager)
''',
    "engines": '''
from factory.plugin_api import Engine


class Impl(Engine):
    """The transformers engine behind a name of its own: replace stream() with your backend."""

    def __init__(self, cfg, manager) -> None:
        self.inner = manager.load("engines", "transformers")(cfg, manager)
        self.template, self.tokenizer = self.inner.template, self.inner.tokenizer
        self.context_length, self.loaded = self.inner.context_length, self.inner.loaded

    def stream(self, request):
        return self.inner.stream(request)
''',
    "evaluators": '''
class Impl:
    """MMLU-style multiple choice through the core's evaluator: change evaluate() to score your way."""

    def evaluate(self, cfg, manager, *, loaded=None, engine=None, progress=True):
        return manager.load("evaluators", "mmlu").evaluate(cfg, manager, loaded=loaded, engine=engine, progress=progress)
''',
    "callbacks": '''
class Impl:
    """Prints the loss each time the Trainer logs."""

    def create(self, cfg):
        from transformers import TrainerCallback

        class Printer(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    print(f"{name}: step {state.global_step} loss {logs['loss']}")

        return Printer()
''',
    "commands": '''
class Impl:
    """``factory {name} [--shout] WHO``: says hello."""

    help = "say hello (a command from factory-plugin-{name})"

    def add_arguments(self, parser) -> None:
        parser.add_argument("who", nargs="?", default="world")
        parser.add_argument("--shout", action="store_true")

    def run(self, args) -> int:
        text = f"hello, {args.who}"
        print(text.upper() if args.shout else text)
        return 0
''',
}

HOOKS = {kind: f"register_{kind}" for kind in CONTRACTS}


def scaffold(name: str, kind: str, directory: str | Path = ".") -> Path:
    """Write ``DIRECTORY/factory-plugin-NAME`` for one implementation of ``kind``; return the folder."""
    if not _NAME.match(name):
        raise ConfigError(
            f"plugin name '{name}' is not a lower-case name of letters, digits, '-' and '_' starting with a letter; "
            "choose one like 'acme' or 'my-method'"
        )
    if kind not in CONTRACTS:
        raise ConfigError(
            f"plugin kind '{kind}' does not exist{did_you_mean(kind, CONTRACTS)} (kinds: {one_of(CONTRACTS)})"
        )
    slug = name.replace("_", "-")
    package = "factory_plugin_" + name.replace("-", "_")
    dist = f"factory-plugin-{slug}"
    root = Path(directory) / dist
    if root.exists() and any(root.iterdir()):
        raise ConfigError(f"folder '{root}' already exists and is not empty; choose another --dir or name")
    contract = CONTRACTS[kind].__name__
    files = {
        "pyproject.toml": _PYPROJECT.format(dist=dist, package=package, name=slug, kind=kind),
        "README.md": _README.format(dist=dist, package=package, name=slug, kind=kind, contract=contract),
        f"{package}/__init__.py": _INIT.format(dist=dist, package=package, name=slug, kind=kind, hook=HOOKS[kind]),
        f"{package}/impl.py": _IMPL_HEAD.format(name=slug, kind=kind, contract=contract)
        + IMPLEMENTATIONS[kind].replace("{name}", slug).lstrip("\n")
        + ("\n\nIMPL = Impl\n" if kind == "engines" else "\n\nIMPL = Impl()\n"),
        "tests/test_plugin.py": _TEST.format(dist=dist, package=package, name=slug, kind=kind),
    }
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


_PYPROJECT = """[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "{kind}: {name}, a factory plugin"
requires-python = ">=3.10"
dependencies = ["factory-core"]

[project.entry-points.factory]
{name} = "{package}"

[tool.setuptools]
packages = ["{package}"]
"""

_README = """# {dist}

A factory plugin registering one implementation of the `{kind}` kind, named `{name}`
(contract `{contract}` in factory's `core/contracts.py`; the table in factory's docs/plugins.md).

```bash
pip install -e .
factory plugins list          # shows {name} ({dist})
pytest tests                  # the contract check and an isolated registration
```

`{package}/__init__.py` holds the hook (keep it light: no torch, no backend imports);
`{package}/impl.py` the implementation, imported only when a run uses it. Import factory only
through `factory.plugin_api`.
"""

_INIT = '''"""{dist}: registers the {kind} implementation '{name}'."""

from factory.plugin_api import hookimpl


@hookimpl
def {hook}(register):
    register("{name}", "{package}.impl:IMPL", description="{kind} '{name}' from {dist}")
'''

_IMPL_HEAD = '''"""The {kind} implementation '{name}' (contract: {contract})."""

'''

_TEST = """from factory.testing import check_plugin_contract


def test_contract():
    rows = check_plugin_contract("{dist}")
    assert rows[0]["provides"] == {{"{kind}": ["{name}"]}}


def test_isolated(plugin_manager):
    import {package}

    plugin_manager.register_plugin({package}, "{name}")
    assert plugin_manager.load("{kind}", "{name}") is not None
"""
