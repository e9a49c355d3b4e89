"""The ``factory`` command line.

argparse keeps start-up fast; every command imports what it needs when it runs, so
``factory --help`` and ``factory plugins list`` never import torch. User errors
(:class:`factory.FactoryError`) end in one sentence on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from factory import __version__
from factory.errors import FactoryError


def _split_config(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """The optional leading config file and the key=value overrides after it."""
    items = list(args)
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


# -- commands ------------------------------------------------------------------------------


def cmd_finetune(ns: argparse.Namespace) -> int:
    from factory.api import finetune

    config, overrides = _split_config(ns.args)
    finetune(config, overrides)
    return 0


def cmd_export(ns: argparse.Namespace) -> int:
    from factory.config import load_config
    from factory.errors import ConfigError
    from factory.model.export import export_model

    config, overrides = _split_config(ns.args)
    targets = [o for o in overrides if o.startswith("output=")]
    if not targets:
        raise ConfigError("factory export needs output=DIR, the folder to write the merged model to")
    cfg = load_config(config, [o for o in overrides if not o.startswith("output=")])
    out = export_model(cfg, cfg.manager(), targets[-1].partition("=")[2])
    print(f"factory: merged model written to {out}")
    return 0


def cmd_chat(ns: argparse.Namespace) -> int:
    from factory.infer.chat import run_chat

    config, overrides = _split_config(ns.args)
    return run_chat(config, overrides, prompt=ns.prompt)


def cmd_serve(ns: argparse.Namespace) -> int:
    from factory.service.app import run_server

    config, overrides = _split_config(ns.args)
    return run_server(config, overrides)


def cmd_data_preview(ns: argparse.Namespace) -> int:
    from factory.config import load_config
    from factory.preview import preview

    args = list(ns.args)
    if args and "=" not in args[0] and not args[0].endswith((".yaml", ".yml", ".json")):
        args[0] = f"dataset={args[0]}"  # `factory data preview NAME`: the data set, as a key
    config, overrides = _split_config(args)
    preview(load_config(config, ["packing=false", *overrides]), n=ns.n)
    return 0


def cmd_templates_check(ns: argparse.Namespace) -> int:
    from factory.data.template_check import run_check

    thinking = {"true": True, "false": False}.get(ns.enable_thinking) if ns.enable_thinking else None
    return run_check(ns.name, jinja=ns.jinja, model=ns.model, data=ns.data, bos_token=ns.bos_token,
                     eos_token=ns.eos_token, date_string=ns.date_string, enable_thinking=thinking)


def cmd_eval(ns: argparse.Namespace) -> int:
    from factory.config import load_config
    from factory.errors import ConfigError

    action = ns.args[0] if ns.args and ns.args[0] in ("history", "compare") else None
    if action is None:
        return _run_evaluation(ns, "eval", {})
    from factory.eval import report
    from factory.eval.store import ResultsStore, compare

    rest = ns.args[1:]
    ids: list[int] = []
    if action == "compare":
        if len(rest) < 2 or not all(item.isdigit() for item in rest[:2]):
            raise ConfigError(f"factory eval compare needs two run ids (e.g. factory eval compare 3 5), got {' '.join(rest[:2]) or 'none'}")
        ids, rest = [int(item) for item in rest[:2]], rest[2:]
    config, overrides = _split_config(rest)
    store = ResultsStore(load_config(config, overrides).results_db)
    if action == "history":
        runs = store.runs(ns.limit)
        if ns.json:
            print(json.dumps([run.to_dict() for run in runs], indent=2, ensure_ascii=False))
        else:
            report.print_history(runs, store.url)
        return 0
    a, b = store.get(ids[0]), store.get(ids[1])
    rows = compare(a, b)
    if ns.json:
        print(json.dumps({"a": a.to_dict(), "b": b.to_dict(), "rows": rows}, indent=2, ensure_ascii=False))
    else:
        report.print_compare(a, b, rows)
    return 0


def cmd_predict(ns: argparse.Namespace) -> int:
    return _run_evaluation(ns, "predict", {"task": "bleu-rouge"})


def _run_evaluation(ns: argparse.Namespace, command: str, defaults: dict) -> int:
    from factory.config import load_config
    from factory.eval import report
    from factory.eval.run import evaluate

    config, overrides = _split_config(ns.args)
    cfg = load_config(config, overrides)
    if cfg.task is None and defaults:
        cfg = load_config(config, [*(f"{k}={v}" for k, v in defaults.items()), *overrides])
    result = evaluate(cfg, command=command)
    if ns.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        report.print_result(result)
        print(f"factory: recorded as run {result.run_id}; see factory eval history")
    return 0


def cmd_bench(ns: argparse.Namespace) -> int:
    from factory.bench import WORKLOADS, run_bench, run_bench_repeated

    if ns.list:
        for name, settings in WORKLOADS.items():
            print(f"{name}: " + " ".join(f"{k}={v}" for k, v in settings.items()))
        return 0
    if ns.repeat == 1:
        result = run_bench(ns.workload, ns.overrides, dataset_dir=ns.dataset_dir, output=ns.output)
    else:
        result = run_bench_repeated(ns.workload, ns.overrides, ns.repeat, dataset_dir=ns.dataset_dir, output=ns.output)
    print(json.dumps(result, indent=2))
    return 0


# -- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="factory",
        description="Fine-tune, serve and evaluate large language models; every method is a plugin.",
        epilog="Configs: a YAML file, then key=value overrides (dotted for plugin options, e.g. lora.rank=16).",
    )
    parser.add_argument("--version", action="version", version=f"factory {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show every library's logs and warnings (default: factory's progress and results only)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("finetune", help="train a model (stage, method and data from the config)")
    p.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value ...]")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("export", help="merge an adapter into its base model and save a plain HF folder")
    p.add_argument("args", nargs="*", metavar="[CONFIG.yaml] model=... adapter=DIR output=DIR")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("chat", help="chat with a model (and adapter) in the terminal")
    p.add_argument("args", nargs="*", metavar="[CONFIG.yaml] model=... [adapter=DIR] [key=value ...]")
    p.add_argument("--prompt", help="answer this one prompt and exit")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("serve", help="serve a model (and adapter) over an OpenAI-compatible HTTP API")
    p.add_argument("args", nargs="*", metavar="[CONFIG.yaml] model=... [adapter=DIR] [host=... port=... api_key=...]")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("data", help="inspect data sets as a stage will see them")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    q = dsub.add_parser("preview", help="tokenized examples with the trained spans marked, and a length summary")
    q.add_argument("args", nargs="*", metavar="[CONFIG.yaml | DATASET] [key=value ...]",
                   help="a run's config and overrides (dataset=, dataset_dir=, template=, model=, cutoff_len=...)")
    q.add_argument("-n", type=int, default=3, help="examples to show (default 3)")
    q.set_defaults(func=cmd_data_preview)

    p = sub.add_parser("templates", help="check a chat template against a model's official one")
    tsub = p.add_subparsers(dest="templates_command", metavar="SUBCOMMAND", required=True)
    q = tsub.add_parser("check", help="render conversations with a factory template and the official Jinja template; "
                        "print the first differing character of each (exit 1 if one differs)")
    q.add_argument("name", help="factory template name (or alias)")
    q.add_argument("--jinja", help="the official chat template as a Jinja file")
    q.add_argument("--model", help="a Hugging Face model folder: its chat_template (unless --jinja) and bos/eos tokens")
    q.add_argument("--data", help="your own conversations: JSON or JSONL rows in OpenAI's form ({\"messages\": [...]})")
    q.add_argument("--bos-token", help="the model's bos token (default: the --model tokenizer's, else none)")
    q.add_argument("--eos-token", help="the model's eos token (default: the --model tokenizer's, else none)")
    q.add_argument("--date-string", help="the date both templates write into a dated system header")
    q.add_argument("--enable-thinking", choices=["true", "false"], help="passed to both templates")
    q.set_defaults(func=cmd_templates_check)

    p = sub.add_parser(
        "eval",
        help="score a model on a multiple-choice benchmark; eval history, eval compare A B",
        description="factory eval [CONFIG] model=... task=cmmlu task_dir=DIR [subjects=a,b] [n_shot=5]; "
        "factory eval history; factory eval compare RUN_A RUN_B",
    )
    p.add_argument("args", nargs="*", metavar="[history | compare A B] [CONFIG.yaml] [key=value ...]")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--limit", type=int, default=20, help="eval history: how many recent runs to list (0: all)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="generate answers for a data set and score them with BLEU-4 and ROUGE")
    p.add_argument("args", nargs="*", metavar="[CONFIG.yaml] model=... dataset=NAME [adapter=DIR] [key=value ...]")
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("bench", help="run a named training workload and measure speed, memory and loss")
    p.add_argument("workload", nargs="?", default="lora", help="workload name (see --list); default: lora")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides; baseline=true turns every speed lever off")
    p.add_argument("--dataset-dir", help="folder with alpaca_en_demo (default: ../shared/data/llamafactory-demo)")
    p.add_argument("--output", help="also write the JSON result to this file")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run N times, each in a fresh process; report the median run and every run's figures")
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    p.set_defaults(func=cmd_bench)

    _add_plugin_commands(sub)
    return parser


def _add_plugin_commands(sub: argparse._SubParsersAction) -> None:
    """Commands plugins add through the ``register_commands`` hook, after the built-in ones.

    Only their names and descriptions are read here: a command's module (which may import a web
    framework) is imported when that command runs, and parses its own arguments then.
    """
    from factory.plugins import get_manager

    for impl in get_manager().implementations("commands"):
        if impl.name in sub.choices:
            print(f"factory: ignoring the command '{impl.name}' of {impl.distribution}: it would shadow a built-in command",
                  file=sys.stderr)
            continue
        p = sub.add_parser(impl.name, help=impl.description, add_help=False, prefix_chars="\0")
        p.add_argument("args", nargs=argparse.REMAINDER)
        p.set_defaults(func=lambda ns, name=impl.name: _run_plugin_command(name, ns.args))


def _run_plugin_command(name: str, argv: list[str]) -> int:
    from factory.plugins import get_manager

    command = get_manager().load("commands", name)  # refuses, in one sentence, one that cannot run here
    parser = argparse.ArgumentParser(prog=f"factory {name}", description=get_manager().get("commands", name).description)
    command.add_arguments(parser)
    return command.run(parser.parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(flag in argv for flag in ("-v", "--verbose"))  # accepted anywhere on the line
    argv = [item for item in argv if item not in ("-v", "--verbose")]
    parser = build_parser()
    # Options may come after key=value arguments (`factory eval task=mmlu --json`): argparse stops
    # filling a trailing positional list at the first option, so the leftovers are appended here.
    ns, extra = parser.parse_known_args(argv)
    trailing = next((name for name in ("args", "overrides") if isinstance(getattr(ns, name, None), list)), None)
    if extra and (trailing is None or any(item.startswith("-") for item in extra)):
        parser.parse_args(argv)  # reports the unrecognised option the usual way
    if extra:
        getattr(ns, trailing).extend(extra)
    if not getattr(ns, "func", None):
        parser.print_help()
        return 0
    from factory.quiet import VERBOSE_ENV, quiet_libraries

    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    quiet_libraries()
    try:
        return ns.func(ns)
    except FactoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
