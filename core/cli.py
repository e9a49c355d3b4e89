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
from typing import Any

from factory import __version__
from factory.errors import FactoryError


def _split_config(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """The optional leading config file and the key=value overrides after it."""
    items = list(args)
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


# -- commands ------------------------------------------------------------------------------


def _require(extra: str, purpose: str) -> None:
    from factory.extras import require

    require(extra, purpose)


def cmd_finetune(ns: argparse.Namespace) -> int:
    from factory.api import finetune

    config, overrides = _split_config(ns.args)
    finetune(config, overrides)
    return 0


def cmd_export(ns: argparse.Namespace) -> int:
    from factory.config import load_config
    from factory.model.export import export_model

    config, overrides = _split_config(ns.args)
    # The command's own words for two export keys; a LLaMA-Factory merge YAML's export_dir/export_size are those keys.
    words = {"output": "export_dir", "max_shard_size": "export_max_shard_size"}
    overrides = [
        words[key] + override[len(key) :] if (key := override.partition("=")[0]) in words else override
        for override in overrides
    ]
    cfg = load_config(config, overrides)
    out = export_model(cfg, cfg.manager())
    print(
        f"factory: merged model written to {out}"
        + (f" (Ollama: ollama create NAME -f {out}/Modelfile)" if cfg.export_ollama else "")
        + (f", uploaded to {cfg.export_hub_repo}" if cfg.export_hub_repo else "")
    )
    return 0


def cmd_convert(ns: argparse.Namespace) -> int:
    from factory.convert import convert

    text, command = convert(ns.config, ns.output)
    if ns.output is None:
        print(text, end="")
    else:
        print(f"factory: wrote {ns.output}; run it with factory {command} {ns.output}")
    return 0


def cmd_chat(ns: argparse.Namespace) -> int:
    from factory.infer.chat import run_chat

    config, overrides = _split_config(ns.args)
    return run_chat(config, overrides, prompt=ns.prompt)


def cmd_serve(ns: argparse.Namespace) -> int:
    _require("serve", "factory serve")
    _require("store", "factory serve (its job queue)")
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
    return run_check(
        ns.name,
        jinja=ns.jinja,
        model=ns.model,
        data=ns.data,
        bos_token=ns.bos_token,
        eos_token=ns.eos_token,
        date_string=ns.date_string,
        enable_thinking=thinking,
    )


def cmd_eval(ns: argparse.Namespace) -> int:
    from factory.config import load_config
    from factory.errors import ConfigError

    action = ns.args[0] if ns.args and ns.args[0] in ("history", "compare") else None
    if action is None:
        return _run_evaluation(ns, "eval", {})
    _require("store", f"factory eval {action}")
    from factory.eval import report
    from factory.eval.store import ResultsStore, compare

    rest = ns.args[1:]
    ids: list[int] = []
    if action == "compare":
        if len(rest) < 2 or not all(item.isdigit() for item in rest[:2]):
            raise ConfigError(
                f"factory eval compare needs two run ids (e.g. factory eval compare 3 5), got {' '.join(rest[:2]) or 'none'}"
            )
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
        if result.run_id is not None:
            print(f"factory: recorded as run {result.run_id}; see factory eval history")
    return 0


def cmd_bench(ns: argparse.Namespace) -> int:
    from factory.bench import WORKLOADS, run_bench, run_bench_repeated

    if ns.list:
        for name, settings in WORKLOADS.items():
            print(f"{name}: " + " ".join(f"{k}={v}" for k, v in settings.items()))
        return 0
    from factory.bench_llamafactory import run_against_llamafactory, side_by_side, split_against

    against, lf_env, overrides = split_against(ns.overrides)
    if against:
        result = run_against_llamafactory(
            ns.workload, overrides, lf_env=lf_env, dataset_dir=ns.dataset_dir, output=ns.output, repeat=ns.repeat
        )
        print(json.dumps(result, indent=2))
        print(side_by_side(result))
        return 0
    if ns.repeat == 1:
        result = run_bench(ns.workload, ns.overrides, dataset_dir=ns.dataset_dir, output=ns.output)
    else:
        result = run_bench_repeated(ns.workload, ns.overrides, ns.repeat, dataset_dir=ns.dataset_dir, output=ns.output)
    print(json.dumps(result, indent=2))
    return 0


# -- the service: workers, jobs, run history -------------------------------------------------


def cmd_worker(ns: argparse.Namespace) -> int:
    _require("store", "factory worker")
    import signal
    import threading

    from factory.config import load_config
    from factory.service.worker import Worker, parse_kinds
    from factory.store.jobs import KINDS

    config, overrides = _split_config(ns.args)
    kinds = [item.partition("=")[2] for item in overrides if item.startswith("kinds=")]
    cfg = load_config(config, [item for item in overrides if not item.startswith("kinds=")])
    worker = Worker(cfg, parse_kinds(kinds[-1]) if kinds else KINDS, name=ns.name, log_json=ns.log_json)
    stop = threading.Event()

    def graceful(signum: int, _frame: object) -> None:
        worker.local.emit(None, "stopping: a running job goes back to the queue at its next batch")
        stop.set()

    signal.signal(signal.SIGTERM, graceful)
    signal.signal(signal.SIGINT, graceful)
    ran = worker.run(stop, exit_idle=ns.exit_idle, max_jobs=ns.max_jobs)
    worker.local.emit(None, f"stopped after {ran} job(s)")
    return 0


def _queue(args: Sequence[str]) -> Any:
    from factory.config import load_config
    from factory.store.jobs import JobQueue

    config, overrides = _split_config(args)
    cfg = load_config(config, overrides)
    return JobQueue(cfg.results_db, timeout=cfg.results_db_timeout)


def cmd_jobs_submit(ns: argparse.Namespace) -> int:
    if not getattr(ns, "server", None):  # with --server only the server needs its database
        _require("store", "factory jobs")
    from factory.config import load_config, parse_overrides, read_config_file

    config, overrides = _split_config(ns.args)
    if ns.server:
        from factory.service.client import ServiceClient

        body = {**(read_config_file(config) if config else {}), **parse_overrides(overrides), "priority": ns.priority}
        kind = ns.kind or ("eval" if body.get("task") else "finetune")
        job = ServiceClient(ns.server).call("POST", "/v1/finetunes" if kind == "finetune" else "/v1/evals", body)
    else:
        from factory.service.jobs import check_runnable, job_kind, outputs_folder, queue_config
        from factory.store.jobs import JobQueue

        cfg = load_config(config, overrides)
        kind = ns.kind or (job_kind(cfg) if cfg.task else "finetune")
        check_runnable(cfg, kind)
        queue = JobQueue(cfg.results_db, timeout=cfg.results_db_timeout)
        job = queue_config(queue, kind, cfg.to_dict(), outputs_folder(cfg), ns.priority).to_dict()
    if ns.json:
        print(json.dumps(job, indent=2, default=str))
    else:
        print(
            f"factory: queued job {job['id']} ({job['kind']}, priority {job['priority']}); see factory jobs show {job['id']}"
        )
    return 0


def cmd_jobs_list(ns: argparse.Namespace) -> int:
    if not getattr(ns, "server", None):  # with --server only the server needs its database
        _require("store", "factory jobs")
    from factory.service import report

    if ns.server:
        from factory.service.client import ServiceClient

        jobs = ServiceClient(ns.server).call("GET", "/v1/jobs", status=ns.status, limit=ns.limit)["data"]
        where = ns.server
    else:
        from factory.store.jobs import parse_statuses

        queue = _queue(ns.args)
        jobs = [job.to_dict() for job in queue.list(statuses=parse_statuses(ns.status), limit=ns.limit)]
        where = queue.url
    if ns.json:
        print(json.dumps(jobs, indent=2, default=str))
    else:
        report.print_jobs(jobs, where)
    return 0


def _job(ns: argparse.Namespace, action: str = "") -> dict:
    if ns.server:
        from factory.service.client import ServiceClient

        return ServiceClient(ns.server).call(
            "POST" if action else "GET", f"/v1/jobs/{ns.id}" + (f"/{action}" if action else "")
        )
    queue = _queue(ns.args)
    return (queue.cancel(ns.id) if action == "cancel" else queue.get(ns.id)).to_dict()


def cmd_jobs_show(ns: argparse.Namespace) -> int:
    if not getattr(ns, "server", None):  # with --server only the server needs its database
        _require("store", "factory jobs")
    from factory.service import report

    job = _job(ns)
    if ns.json:
        print(json.dumps(job, indent=2, default=str))
    else:
        report.print_job(job)
    return 0


def cmd_jobs_cancel(ns: argparse.Namespace) -> int:
    if not getattr(ns, "server", None):  # with --server only the server needs its database
        _require("store", "factory jobs")
    job = _job(ns, "cancel")
    what = (
        "cancelled"
        if job["status"] == "cancelled"
        else f"asked to stop; worker {job['worker']} stops it at its next batch"
    )
    print(f"factory: job {job['id']} {what}")
    return 0


def cmd_jobs_logs(ns: argparse.Namespace) -> int:
    if not getattr(ns, "server", None):  # with --server only the server needs its database
        _require("store", "factory jobs")
    import time

    from factory.service import report
    from factory.store.jobs import FINISHED

    after = 0
    if ns.server:
        from factory.service.client import ServiceClient

        client = ServiceClient(ns.server)

        def fetch() -> tuple[list[dict], str]:
            answer = client.call("GET", f"/v1/jobs/{ns.id}/logs", after=after)
            return answer["data"], answer["status"]
    else:
        queue = _queue(ns.args)
        queue.get(ns.id)

        def fetch() -> tuple[list[dict], str]:
            return [line.to_dict() for line in queue.logs(ns.id, after=after)], queue.get(ns.id).status

    while True:
        lines, status = fetch()
        for line in lines:
            print(report.log_line(line, as_json=ns.json), flush=True)
            after = line["id"]
        if not ns.follow or (status in FINISHED and not lines):
            return 0
        time.sleep(1.0)


def _db(args: Sequence[str]) -> Any:
    from factory.config import load_config
    from factory.store.database import Database

    config, overrides = _split_config(args)
    cfg = load_config(config, overrides)
    return Database(cfg.results_db, timeout=cfg.results_db_timeout)


def cmd_runs_list(ns: argparse.Namespace) -> int:
    _require("store", "factory runs")
    from factory.service import report
    from factory.store.history import history

    db = _db(ns.args)
    runs = history(db, ns.kind, ns.limit)
    if ns.json:
        print(json.dumps(runs, indent=2, default=str, ensure_ascii=False))
    else:
        report.print_training_runs(runs, db.shown)
    return 0


def cmd_runs_show(ns: argparse.Namespace) -> int:
    _require("store", "factory runs")
    from factory.store.history import parse_ref, run_details

    db = _db(ns.args)
    kind, number = parse_ref(ns.ref)
    if ns.json:
        print(json.dumps(run_details(db, ns.ref), indent=2, default=str, ensure_ascii=False))
        return 0
    if kind == "eval":
        from factory.eval import report as eval_report
        from factory.store.evals import ResultsStore

        eval_report.print_history([ResultsStore(db).get(number)], db.shown)
        return 0
    from factory.service import report
    from factory.store.evals import ResultsStore
    from factory.store.training import TrainingRuns

    run = TrainingRuns(db).get(number)
    report.print_training_run(run, ResultsStore(db).evaluations_of(run.output_dir) if run.output_dir else [])
    return 0


def cmd_runs_compare(ns: argparse.Namespace) -> int:
    _require("store", "factory runs")
    from factory.errors import ConfigError
    from factory.store.history import parse_ref

    db = _db(ns.args)
    (kind_a, a), (kind_b, b) = parse_ref(ns.a), parse_ref(ns.b)
    if kind_a != kind_b:
        raise ConfigError(f"runs {ns.a} and {ns.b} are of different kinds; compare two training runs or two eval runs")
    if kind_a == "eval":
        from factory.eval import report as eval_report
        from factory.store.evals import ResultsStore, compare

        store = ResultsStore(db)
        run_a, run_b = store.get(a), store.get(b)
        rows = compare(run_a, run_b)
        if ns.json:
            print(json.dumps({"a": run_a.to_dict(), "b": run_b.to_dict(), "rows": rows}, indent=2, ensure_ascii=False))
        else:
            eval_report.print_compare(run_a, run_b, rows)
        return 0
    from factory.service import report
    from factory.store.training import TrainingRuns, compare_training

    runs = TrainingRuns(db)
    run_a, run_b = runs.get(a), runs.get(b)
    rows = compare_training(run_a, run_b)
    if ns.json:
        print(
            json.dumps({"a": run_a.to_dict(), "b": run_b.to_dict(), **rows}, indent=2, default=str, ensure_ascii=False)
        )
    else:
        report.print_training_compare(run_a, run_b, rows)
    return 0


# -- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="factory",
        description="Fine-tune, serve and evaluate large language models; every method is a plugin.",
        epilog="Configs: a YAML file, then key=value overrides (dotted for plugin options, e.g. lora.rank=16).",
    )
    parser.add_argument("--version", action="version", version=f"factory {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show every library's logs and warnings (default: factory's progress and results only)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("finetune", help="train a model (stage, method and data from the config)")
    p.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value ...]")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("export", help="merge an adapter into its base model and save a plain HF folder")
    p.add_argument(
        "args",
        nargs="*",
        metavar="[CONFIG.yaml] model=... adapter=DIR output=DIR [max_shard_size=2GB export.ollama=true export.hub_repo=OWNER/NAME]",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("convert", help="write a config (a LLaMA-Factory YAML too) in factory's grouped form")
    p.add_argument("config", metavar="CONFIG.yaml")
    p.add_argument("-o", "--output", metavar="FACTORY.yaml", help="file to write (default: print it)")
    p.set_defaults(func=cmd_convert)

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
    q.add_argument(
        "args",
        nargs="*",
        metavar="[CONFIG.yaml | DATASET] [key=value ...]",
        help="a run's config and overrides (dataset=, dataset_dir=, template=, model=, cutoff_len=...)",
    )
    q.add_argument("-n", type=int, default=3, help="examples to show (default 3)")
    q.set_defaults(func=cmd_data_preview)

    p = sub.add_parser("templates", help="check a chat template against a model's official one")
    tsub = p.add_subparsers(dest="templates_command", metavar="SUBCOMMAND", required=True)
    q = tsub.add_parser(
        "check",
        help="render conversations with a factory template and the official Jinja template; "
        "print the first differing character of each (exit 1 if one differs)",
    )
    q.add_argument("name", help="factory template name (or alias)")
    q.add_argument("--jinja", help="the official chat template as a Jinja file")
    q.add_argument("--model", help="a Hugging Face model folder: its chat_template (unless --jinja) and bos/eos tokens")
    q.add_argument("--data", help='your own conversations: JSON or JSONL rows in OpenAI\'s form ({"messages": [...]})')
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
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides; baseline=true turns every speed lever off; against=llamafactory lf_env=DIR "
        "runs the same job through LLaMA-Factory first and prints both side by side",
    )
    p.add_argument("--dataset-dir", help="folder with alpaca_en_demo (default: ../shared/data/llamafactory-demo)")
    p.add_argument("--output", help="also write the JSON result to this file")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run N times, each in a fresh process; report the median run and every run's figures "
        "(with against=llamafactory: N pairs, one after the other, and the pair with the median speed-up)",
    )
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "worker",
        help="run queued jobs from the database (eval, predict, finetune)",
        description="factory worker [CONFIG.yaml] [kinds=eval,predict,finetune] [results_db=URL] [jobs.KEY=...]",
    )
    p.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [kinds=...] [key=value ...]")
    p.add_argument("--name", help="this worker's name in the jobs table (default HOST:PID)")
    p.add_argument("--exit-idle", type=float, metavar="SECONDS", help="stop once the queue has been empty this long")
    p.add_argument("--max-jobs", type=int, metavar="N", help="stop after N jobs")
    p.add_argument("--log-json", action="store_true", help="log JSON lines (each with its job_id) instead of text")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("jobs", help="submit, list, show, cancel jobs and read their logs (database or --server)")
    jsub = p.add_subparsers(dest="jobs_command", metavar="SUBCOMMAND", required=True)

    def job_command(
        name: str, help_text: str, func: Any, metavar: str = "[results_db=URL]", with_id: bool = True
    ) -> argparse.ArgumentParser:
        q = jsub.add_parser(name, help=help_text)
        if with_id:
            q.add_argument("id", type=int, help="the job's id")
        q.add_argument("args", nargs="*", metavar=metavar)
        q.add_argument("--server", metavar="URL", help="ask a running factory serve instead (key from FACTORY_API_KEY)")
        q.add_argument("--json", action="store_true", help="print JSON")
        q.set_defaults(func=func)
        return q

    q = job_command(
        "submit",
        "queue a job from a config file and/or key=value settings",
        cmd_jobs_submit,
        "[CONFIG.yaml] [key=value ...]",
        with_id=False,
    )
    q.add_argument(
        "--kind",
        choices=("eval", "predict", "finetune"),
        help="default: predict for task=bleu-rouge, eval for another task, finetune without one",
    )
    q.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    q = job_command("list", "jobs, newest first", cmd_jobs_list, with_id=False)
    q.add_argument("--status", help="only these statuses, comma-separated (queued,running,succeeded,failed,cancelled)")
    q.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    job_command("show", "one job: status, progress, result", cmd_jobs_show)
    job_command("cancel", "cancel a queued job, or stop a running one at its next batch", cmd_jobs_cancel)
    q = job_command("logs", "a job's log lines", cmd_jobs_logs)
    q.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until the job ends")

    p = sub.add_parser("runs", help="training and eval runs in the database: list, show, compare")
    rsub = p.add_subparsers(dest="runs_command", metavar="SUBCOMMAND", required=True)
    q = rsub.add_parser("list", help="runs, newest first")
    q.add_argument("args", nargs="*", metavar="[results_db=URL]")
    q.add_argument("--kind", choices=("train", "eval"), help="only training or only eval runs")
    q.add_argument("--limit", type=int, default=20, help="at most this many (0: all)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_runs_list)
    q = rsub.add_parser("show", help="one run: config, loss curve, scores, outputs, the evals of what it wrote")
    q.add_argument("ref", metavar="RUN", help="train-N or eval-N (a bare N is train-N)")
    q.add_argument("args", nargs="*", metavar="[results_db=URL]")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_runs_show)
    q = rsub.add_parser("compare", help="two training runs (settings that differ, outcomes) or two eval runs (scores)")
    q.add_argument("a", metavar="RUN_A")
    q.add_argument("b", metavar="RUN_B")
    q.add_argument("args", nargs="*", metavar="[results_db=URL]")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_runs_compare)

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
            print(
                f"factory: ignoring the command '{impl.name}' of {impl.distribution}: it would shadow a built-in command",
                file=sys.stderr,
            )
            continue
        p = sub.add_parser(impl.name, help=impl.description, add_help=False, prefix_chars="\0")
        p.add_argument("args", nargs=argparse.REMAINDER)
        p.set_defaults(func=lambda ns, name=impl.name: _run_plugin_command(name, ns.args))


def _run_plugin_command(name: str, argv: list[str]) -> int:
    from factory.plugins import get_manager

    command = get_manager().load("commands", name)  # refuses, in one sentence, one that cannot run here
    parser = argparse.ArgumentParser(
        prog=f"factory {name}", description=get_manager().get("commands", name).description
    )
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
