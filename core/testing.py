"""Test helpers for factory and for plugin authors, loaded by pytest as a plugin.

Fixtures:
- ``_results_db_for_tests`` (automatic): every run a test records without naming ``results_db``
  (training runs, evals) goes to a database in the session's temporary folder, never the user's.
- ``plugin_manager``: an isolated manager with the built-ins only (no entry points, no
  environment); register test plugins on it with ``register_plugin(obj, name)``.
- ``tiny_causal_lm``: a folder holding a tiny random-weight Llama causal LM and a small
  byte-level BPE tokenizer with a ChatML chat template, built offline in seconds.

And :func:`check_plugin_contract`, which every plugin's own tests call,
:func:`write_quantized_checkpoint`, which turns the tiny model into a pre-quantized checkpoint for
the quantization plugins' tests, :func:`check_resume`, which checks that a run resumed from a
checkpoint ends where the uninterrupted run does, and for optimizer plugins :func:`optimizer_step`,
:func:`check_optimizer_reload`, :func:`check_layerwise_steps` and :func:`check_optimizer_resume`.

This module is imported at pytest start-up, so it imports nothing heavy at module level.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from factory.plugins import ENTRY_POINT_GROUP, PluginManager

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_TOKENIZER_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Who are you? I am an AI assistant made to help you.",
    "Give three tips for staying healthy. Eat well, sleep, and exercise.",
    "def add(a, b):\n    return a + b\n",
    "0123456789 + - * / = ( ) [ ] { } , . ; : ! ? ' \"",
    "你好，我是一个助手。",
]


@pytest.fixture(scope="session", autouse=True)
def _results_db_for_tests(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Point FACTORY_RESULTS_DB (inherited by subprocesses too) at a throwaway file for the whole session."""
    from factory.store.database import ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENV, str(tmp_path_factory.mktemp("results") / "results.db"))
        yield


@pytest.fixture
def plugin_manager() -> PluginManager:
    """A manager with the core's built-ins and nothing discovered from the environment."""
    return PluginManager(entry_points=False, use_env=False)


def build_tiny_causal_lm(
    path: str | Path, *, vocab_size: int = 512, layers: int = 2, hidden: int = 64, seed: int = 0
) -> Path:
    """Write a tiny random Llama model and a matching BPE tokenizer (ChatML) to ``path``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_TOKENIZER_TEXT * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny random causal LM folder (built once per test session)."""
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


# One fresh interpreter reports on every distribution named in argv[1] ({distribution: backend modules}):
# the plugin manager imports every plugin's entry points anyway, so "heavy" is measured as in a probe of one.
_CONTRACT_PROBE = r"""
import json, sys
from factory.plugins import PluginManager
backends = json.loads(sys.argv[1])
before = set(sys.modules)
manager = PluginManager()
imported = set(sys.modules) - before
impls = [(kind, name, impl) for kind in manager._impls for name, group in manager._impls[kind].items() for impl in group]


def report(dist):
    mine = [r for r in manager.records.values() if r.distribution == dist]
    heavy = sorted(m for m in imported if m.split(".")[0] in set(backends[dist]) | {"torch"})
    options = {}
    for kind, name, impl in impls:
        if impl.distribution == dist and impl.options is not None:
            try:
                impl.options()
                options[f"{kind}.{name}"] = None
            except Exception as exc:
                options[f"{kind}.{name}"] = f"{exc.__class__.__name__}: {exc}"
    conflicts = [f"{kind}.{name}: " + " vs ".join(i.distribution for i in group)
                 for (kind, name), group in manager.conflicts().items()
                 if any(i.distribution == dist for i in group)]
    sections = {impl.section for _, _, impl in impls if impl.distribution == dist and impl.section}
    sections_error = next((msg for name, msg in manager.section_conflicts().items() if name in sections), None)
    rows = [row for row in manager.listing() if row["distribution"] == dist]
    contracts = {}
    for kind, name, impl in impls:
        if impl.distribution == dist and impl.unavailable_reason() is None:
            try:
                impl.load()
                contracts[f"{kind}.{name}"] = None
            except Exception as exc:
                contracts[f"{kind}.{name}"] = str(exc)
    return {"records": [r.__dict__ for r in mine], "heavy": heavy, "options": options, "conflicts": conflicts,
            "sections_error": sections_error, "rows": rows, "contracts": contracts}


print(json.dumps({dist: report(dist) for dist in backends}))
"""

# Probe reports by environment: the plugin tests of one session share a single probe of every installed plugin.
_CONTRACT_REPORTS: dict[tuple[str, ...], dict[str, Any]] = {}


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    """Top-level module -> distributions, read once (it walks every installed distribution)."""
    import importlib.metadata

    return importlib.metadata.packages_distributions()


def _backend_modules(distribution: str) -> list[str]:
    """Top-level modules of the packages a distribution depends on (its backends)."""
    import importlib.metadata

    from packaging.requirements import Requirement

    reqs = importlib.metadata.requires(distribution) or []
    names = {Requirement(r).name.lower().replace("_", "-") for r in reqs if "extra ==" not in r}
    names.discard("factory-core")
    modules = []
    for module, dists in _packages_distributions().items():
        if any(d.lower().replace("_", "-") in names for d in dists):
            modules.append(module)
    return sorted(set(modules))


def _probe(distributions: list[str]) -> tuple[dict[str, Any] | None, str]:
    """Run the contract probe over ``distributions`` in a fresh interpreter: its reports, or None and its stderr."""
    backends = {dist: _backend_modules(dist) for dist in distributions}
    proc = subprocess.run(
        [sys.executable, "-c", _CONTRACT_PROBE, json.dumps(backends)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        return None, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), ""


def _contract_report(distribution: str) -> dict[str, Any]:
    """The probe's report on ``distribution``, from one probe of every installed plugin per environment.

    Should that shared probe crash (a plugin taking the interpreter down), the distribution gets a probe of its own.
    """
    import importlib.metadata
    import os

    environment = sorted(f"{k}={v}" for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST")
    key = (sys.executable, *sys.path, *environment)
    if key not in _CONTRACT_REPORTS:
        installed = {ep.dist.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.dist}
        _CONTRACT_REPORTS[key] = _probe(sorted(installed))[0] or {}
    if distribution in _CONTRACT_REPORTS[key]:
        return _CONTRACT_REPORTS[key][distribution]
    own, stderr = _probe([distribution])
    assert own is not None, f"contract probe crashed for {distribution}:\n{stderr}"
    return own[distribution]


def check_plugin_contract(distribution: str) -> list[dict[str, Any]]:
    """Check an installed plugin distribution against factory's plugin contract.

    In a fresh interpreter (one per environment checks every installed plugin, and later calls read its
    report): its entry points load, importing them imports neither torch nor the
    distribution's own backends, no hook is misspelled, its names clash with no other installed
    plugin, every options model validates with its defaults, every implementation that can run
    here loads and fulfils its kind's contract (:mod:`factory.contracts`), and it is listed. Returns the
    distribution's listing rows; raises AssertionError naming each broken rule.
    """
    import importlib.metadata

    eps = [
        ep
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        if ep.dist and ep.dist.name == distribution
    ]
    assert eps, f"{distribution} declares no entry point in group '{ENTRY_POINT_GROUP}' (or is not installed)"
    report = _contract_report(distribution)
    problems = []
    for record in report["records"]:
        if record["error"]:
            problems.append(f"plugin '{record['name']}' failed to load: {record['error']}")
    if report["heavy"]:
        problems.append(f"importing the plugin imported {', '.join(report['heavy'])}; defer them to the implementation")
    problems += [
        f"options of {key} do not validate with defaults: {err}" for key, err in report["options"].items() if err
    ]
    problems += [f"name registered twice: {c}" for c in report["conflicts"]]
    problems += [err for err in report["contracts"].values() if err]
    if report["sections_error"]:
        problems.append(report["sections_error"])
    listed = {row["name"] for row in report["rows"]}
    problems += [f"entry point '{ep.name}' is not listed" for ep in eps if ep.name not in listed]
    assert not problems, f"{distribution} breaks the plugin contract:\n- " + "\n- ".join(problems)
    return report["rows"]


def write_quantized_checkpoint(
    src: Path, dst: Path, quantize: Callable[[Any], tuple[dict[str, Any], Any]], quantization_config: dict[str, Any]
) -> dict[str, Any]:
    """Copy the model folder ``src`` to ``dst`` with every ``*proj.weight`` replaced by ``quantize(weight)``.

    ``quantize`` returns the quantized tensors (named by suffix, e.g. ``{"qweight": ...}``) and the
    weight they stand for; the config gains ``quantization_config``. Returns each projection's
    stand-in weight by module name: the oracle a plugin's loaded layers are compared against.
    """
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True)
    tensors, dequantized = {}, {}
    for name, weight in load_file(src / "model.safetensors").items():
        if not name.endswith("proj.weight"):
            tensors[name] = weight
            continue
        layer = name.removesuffix(".weight")
        parts, dequantized[layer] = quantize(weight)
        tensors |= {f"{layer}.{suffix}": tensor for suffix, tensor in parts.items()}
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = quantization_config
    (dst / "config.json").write_text(json.dumps(config))
    for file in src.glob("tokenizer*"):
        (dst / file.name).write_bytes(file.read_bytes())
    return dequantized


def check_resume(out: str | Path, overrides: list[str], *, steps: int = 4) -> dict[str, Any]:
    """Train ``steps`` optimizer steps with a checkpoint half-way, then train again in a fresh folder
    resumed from a copy of that checkpoint; assert both runs end with identical weights.

    For optimizer and method plugins whose state goes through the Trainer's checkpoints. ``overrides``
    are ``factory finetune`` settings (model, data, optimizer...); returns the uninterrupted run's metrics.
    """
    import shutil

    import torch
    from safetensors.torch import load_file

    from factory.api import finetune

    out = Path(out)
    half = steps // 2
    common = [*overrides, f"max_steps={steps}", f"save_steps={half}", "sample_prompt=null"]
    metrics = finetune(None, [*common, f"output_dir={out / 'straight'}"])
    shutil.copytree(out / "straight" / f"checkpoint-{half}", out / "resumed" / f"checkpoint-{half}")
    finetune(None, [*common, f"output_dir={out / 'resumed'}", "resume=true"])
    record = json.loads((out / "resumed" / "factory_run.json").read_text())
    assert str(record["resumed_from"]).endswith(f"checkpoint-{half}"), record["resumed_from"]
    straight, resumed = (load_file(out / name / "model.safetensors") for name in ("straight", "resumed"))
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), f"{key} differs after resuming from checkpoint-{half}"
    return metrics


def optimizer_step(model: Any, optimizer: Any, batch: Any) -> float:
    """One causal-LM training step on ``batch`` (its own labels): backward, step, zero the gradients; the loss."""
    loss = model(batch, labels=batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


def _decaying(optimizer: Any, factor: float = 0.1) -> Any:
    """A learning rate that falls by ``factor`` of its start every step (0: constant), so a resumed or copied
    schedule that is off by one step shows."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 - i * factor)


def check_optimizer_reload(
    model_path: str | Path,
    create: Callable[[Any], Any],
    batch: Any,
    *,
    before: int = 2,
    after: int = 2,
    schedule: bool = True,
) -> None:
    """Step a model ``before`` times, checkpoint weights, optimizer and learning-rate schedule in memory, reload
    them as the Trainer does (weights first, ``torch.load(weights_only=True)``) into a fresh model and optimizer,
    and step both ``after`` more times: the weights must be identical.

    ``create(model)`` builds the optimizer under test. The reloaded side starts from another global seed, as a new
    process would, so state the optimizer draws at random must come back from the checkpoint. With
    ``schedule=False`` the learning rate stays constant (no scheduler is attached).
    """
    import io

    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    straight = AutoModelForCausalLM.from_pretrained(model_path)
    optimizer = create(straight)
    decay = 0.1 if schedule else 0.0
    lr_schedule = _decaying(optimizer, decay)

    def advance(model: Any, optimizer: Any, lr_schedule: Any, steps: int) -> None:
        for _ in range(steps):
            optimizer_step(model, optimizer, batch)
            lr_schedule.step()

    advance(straight, optimizer, lr_schedule, before)
    buffer = io.BytesIO()
    torch.save(
        {"model": straight.state_dict(), "optimizer": optimizer.state_dict(), "lr": lr_schedule.state_dict()}, buffer
    )
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    advance(straight, optimizer, lr_schedule, after)  # the uninterrupted run goes on

    torch.manual_seed(1)
    resumed = AutoModelForCausalLM.from_pretrained(model_path)
    resumed.load_state_dict(saved["model"])
    resumed_optimizer = create(resumed)
    resumed_schedule = _decaying(resumed_optimizer, decay)  # built before the states load, as the Trainer does
    resumed_optimizer.load_state_dict(saved["optimizer"])
    resumed_schedule.load_state_dict(saved["lr"])
    advance(resumed, resumed_optimizer, resumed_schedule, after)
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), f"{name} differs after reloading at step {before}"


def check_layerwise_steps(
    model_path: str | Path, layerwise: Callable[[Any], Any], reference: Callable[[Any], Any], batch: Any, steps: int
) -> Any:
    """A layer-wise optimizer (each weight stepped inside backward) against a ``reference`` optimizer stepping every
    weight after backward, both on a decaying learning rate: no gradient may outlive backward, every weight must
    train, and the weights must agree after ``steps`` steps. Returns the layer-wise optimizer.
    """
    import torch
    from transformers import AutoModelForCausalLM

    ours_model, theirs_model = (AutoModelForCausalLM.from_pretrained(model_path) for _ in range(2))
    ours, theirs = layerwise(ours_model), reference(theirs_model)
    ours_lr, theirs_lr = _decaying(ours), _decaying(theirs)
    start = {name: p.detach().clone() for name, p in ours_model.named_parameters()}
    for _ in range(steps):
        ours_model(batch, labels=batch).loss.backward()
        assert all(p.grad is None for p in ours_model.parameters()), "a gradient outlived its weight's step"
        ours.step()
        ours.zero_grad()
        ours_lr.step()
        optimizer_step(theirs_model, theirs, batch)
        theirs_lr.step()
    for (name, a), b in zip(ours_model.named_parameters(), theirs_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7, msg=name)
        assert not torch.equal(a, start[name]), f"{name} did not train"
    return ours


def check_optimizer_resume(out: str | Path, model: str | Path, data_dir: str | Path, *overrides: str) -> dict[str, Any]:
    """:func:`check_resume` for a full fine-tune of ``model`` on the demo set in ``data_dir`` (16 rows, four steps
    of four) with the optimizer ``overrides`` name; also asserts the loss falls. Returns the run's metrics."""
    metrics = check_resume(
        out,
        [
            f"model={model}",
            "dataset=alpaca_en_demo",
            f"dataset_dir={data_dir}",
            "max_samples=16",
            "cutoff_len=64",
            "batch_size=4",
            "learning_rate=1e-2",
            "logging_steps=1",
            "precision=fp32",
            "method=full",
            *overrides,
        ],
    )
    losses = [entry["loss"] for entry in metrics["log_history"] if "loss" in entry]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    return metrics
