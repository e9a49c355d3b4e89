"""The page (Gradio Blocks): Train, Chat, Evaluate, Export and Runs tabs.

Every run setting is a field generated from the config schema (:mod:`.forms`); this module only
lays the fields out and wires buttons to the same functions the CLI calls. Jobs go through the
database (:mod:`.desk`), so what the page shows survives the browser and the page's process.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local tool

import gradio as gr  # noqa: E402 - after the analytics switch

from factory.plugin_api import FactoryError, export_model, load_config  # noqa: E402
from factory_plugin_webui import labels  # noqa: E402
from factory_plugin_webui.chat import ChatDesk  # noqa: E402
from factory_plugin_webui.desk import Desk, progress_text  # noqa: E402
from factory_plugin_webui.forms import FieldSpec, check, error_key, fields, from_config, to_config  # noqa: E402
from factory_plugin_webui.preview import dataset_names, model_choices, model_summary, preview_html  # noqa: E402
from factory_plugin_webui.settings import command_line, to_yaml  # noqa: E402

REFRESH_SECONDS = 2.0
CSS = """
.field-error p { color: #b91c1c; font-weight: 600; margin: 0; }
mark.trained { background: #bbf7d0; }
span.prompt { color: #6b7280; }
.error { color: #b91c1c; }
"""
# Field kinds whose value is typed in, so can be wrong: each gets an error line beneath it.
TYPED = ("text", "number", "yaml")
CHAT_KEYS = ("model", "adapter", "template", "system", "max_new_tokens", "temperature", "top_p")
EVAL_KEYS = (
    "model",
    "adapter",
    "template",
    "task",
    "task_dir",
    "subjects",
    "eval_split",
    "n_shot",
    "eval_prompt",
    "dataset",
    "dataset_dir",
    "max_samples",
    "max_new_tokens",
)
EXPORT_KEYS = (
    "model",
    "adapter",
    "template",
    "precision",
    "overwrite_output_dir",
    "export_dir",
    "export_max_shard_size",
    "export_ollama",
    "export_hub_repo",
    "export_hub_private",
)


def elem(key: str) -> str:
    return key.replace(".", "-").replace("_", "-")


class Form:
    """A list of generated fields on the page, each with its error line beneath it."""

    def __init__(self, page: Page, name: str) -> None:
        self.page, self.name = page, name
        self.specs: list[FieldSpec] = []  # in the order rendered, as are inputs
        self.inputs: list[Any] = []
        self.checked: list[FieldSpec] = []  # the fields with an error line, in the order of errors
        self.errors: list[Any] = []

    def render(self, specs: list[FieldSpec], values: dict[str, Any], columns: int = 3) -> None:
        for start in range(0, len(specs), columns):
            with gr.Row():
                for spec in specs[start : start + columns]:
                    with gr.Column(min_width=220):
                        self._field(spec, values)

    def _field(self, spec: FieldSpec, values: dict[str, Any]) -> None:
        self.specs.append(spec)
        value = from_config([spec], values)[0]
        common = {"label": spec.key, "info": spec.description or None, "elem_id": f"{self.name}-{elem(spec.key)}"}
        if spec.kind == "bool":
            box: Any = gr.Checkbox(value=value, **common)
        elif spec.kind in ("choice", "multi", "tristate"):
            choices = list(spec.choices)
            if spec.kind == "choice" and value not in [v for _, v in choices]:
                choices.append((str(value), value))
            box = gr.Dropdown(
                choices=choices,
                value=value,
                multiselect=spec.kind == "multi",
                allow_custom_value=spec.key in ("model", "dataset"),
                **common,
            )
        else:
            box = gr.Textbox(value=value, max_lines=1, **common)
        self.inputs.append(box)
        if spec.key in labels.FIELDS_ZH:  # the others keep their key as the label in both languages
            self.page.labelled.append((box, "field", spec.key))
        if spec.kind in TYPED:  # a value typed in can be wrong; a choice from a list cannot
            self.checked.append(spec)
            self.errors.append(
                gr.Markdown(
                    "", visible=False, elem_id=f"{self.name}-error-{elem(spec.key)}", elem_classes=["field-error"]
                )
            )

    def input(self, key: str) -> Any:
        return self.inputs[[s.key for s in self.specs].index(key)]

    def config(self, values: tuple[Any, ...]) -> dict[str, Any]:
        return to_config(self.specs, values)

    def error_updates(self, message: str | None, key: str | None) -> list[Any]:
        """Show ``message`` under the field it names (nothing elsewhere); hide every other error line."""
        out = []
        for spec in self.checked:
            named = message is not None and key is not None and (key == spec.key or key.startswith(spec.key + "."))
            out.append(gr.update(value=f"⚠ {message}" if named else "", visible=named))
        return out

    def placed(self, key: str | None) -> bool:
        return key is not None and any(key == s.key or key.startswith(s.key + ".") for s in self.checked)


class Page:
    """The five tabs over one database and one plugin manager."""

    def __init__(self, base: Any) -> None:
        self.base = base
        self.manager = base.manager()
        self.desk = Desk(base)
        self.chat = ChatDesk()
        self.values = base.to_dict()
        self.labelled: list[tuple[Any, str, str]] = []  # (component, "field"|"text", key or text name)

    # -- layout ----------------------------------------------------------------------------------

    def _t(self, component: Any, name: str) -> Any:
        self.labelled.append((component, "text", name))
        return component

    def _specs(self, **kwargs: Any) -> list[FieldSpec]:
        out = []
        for spec in fields(self.manager, **kwargs):
            if spec.key == "model":
                spec = replace(spec, kind="choice", choices=tuple((a, a) for a in model_choices()))
            elif spec.key == "dataset":
                names = dataset_names(self.base.dataset_dir)
                spec = replace(spec, kind="multi", choices=tuple((n, n) for n in names))
            out.append(spec)
        return out

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="factory", analytics_enabled=False) as demo:
            with gr.Row():
                self._t(gr.Markdown(f"## {labels.text('title', 'en')}"), "title")
                # labelled in both languages, and never an output of its own change (that would fire it again)
                lang = gr.Radio(
                    choices=[(v, k) for k, v in labels.LANGUAGES.items()],
                    value="en",
                    label="Language / 语言",
                    elem_id="language",
                )
            with gr.Tabs():
                with self._t(gr.Tab("Train", id="train", elem_id="tab-train"), "tab.train"):
                    self._train(demo)
                with self._t(gr.Tab("Chat", id="chat", elem_id="tab-chat"), "tab.chat"):
                    self._chat()
                with self._t(gr.Tab("Evaluate", id="evaluate", elem_id="tab-evaluate"), "tab.evaluate"):
                    self._evaluate(demo)
                with self._t(gr.Tab("Export", id="export", elem_id="tab-export"), "tab.export"):
                    self._export()
                with self._t(gr.Tab("Runs", id="runs", elem_id="tab-runs"), "tab.runs"):
                    self._runs(demo)
            components = [c for c, _, _ in self.labelled]
            lang.change(self._relabel, inputs=lang, outputs=components)
        return demo

    def _relabel(self, lang: str) -> list[Any]:
        out = []
        for component, kind, name in self.labelled:
            label = labels.field_label(name, lang) if kind == "field" else labels.text(name, lang)
            if isinstance(component, gr.Button):
                out.append(gr.update(value=label))
            elif isinstance(component, gr.Markdown):
                out.append(gr.update(value=f"## {label}"))
            else:
                out.append(gr.update(label=label))
        return out

    # -- Train -----------------------------------------------------------------------------------

    def _train(self, demo: gr.Blocks) -> None:
        specs = self._specs()
        form = Form(self, "train")
        core = [s for s in specs if not s.plugin]
        model_info = gr.Markdown(model_summary(self.base), elem_id="model-info")
        for group in ("model", "data", "train", "output"):
            with self._t(gr.Accordion(labels.text(f"group.{group}", "en"), open=group != "output"), f"group.{group}"):
                form.render([s for s in core if s.group == group], self.values)
        with self._t(gr.Accordion(labels.text("group.plugins", "en"), open=True), "group.plugins"):
            sections: dict[str, list[FieldSpec]] = {}
            for spec in specs:
                if spec.plugin:
                    sections.setdefault(spec.group, []).append(spec)
            for name, section in sections.items():
                used = ", ".join(section[0].used_by)
                with gr.Accordion(f"{name} ({used}; {section[0].plugin})", open=False, elem_id=f"section-{elem(name)}"):
                    form.render(section, self.values)
        with gr.Row():
            preview_btn = self._t(gr.Button("Preview data", elem_id="train-preview"), "preview")
            command_btn = self._t(gr.Button("Show command", elem_id="train-command"), "show_command")
            start_btn = self._t(gr.Button("Start", variant="primary", elem_id="train-start"), "start")
            stop_btn = self._t(gr.Button("Stop", variant="stop", elem_id="train-stop"), "stop")
        status = gr.Markdown("", elem_id="train-status")
        preview = gr.HTML("", elem_id="train-preview-rows")
        with gr.Row():
            settings_path = self._t(
                gr.Textbox(
                    str(Path.cwd() / "webui-settings.yaml"),
                    label="Settings file (YAML)",
                    elem_id="settings-path",
                    max_lines=1,
                ),
                "settings_file",
            )
            save_btn = self._t(gr.Button("Save settings", elem_id="settings-save"), "save")
            load_btn = self._t(gr.Button("Load settings", elem_id="settings-load"), "load")
        settings_file = gr.File(
            label="settings", interactive=True, file_types=[".yaml", ".yml"], elem_id="settings-file"
        )
        with gr.Row():
            yaml_box = self._t(
                gr.Code("", language="yaml", label="YAML for factory finetune FILE", elem_id="train-yaml"), "yaml"
            )
            command = self._t(gr.Textbox("", label="Command line", lines=3, elem_id="train-command-line"), "command")
        progress = self._t(gr.Markdown("", elem_id="train-progress"), "progress")
        loss_plot = self._t(
            gr.LinePlot(x="step", y="loss", label="Loss curve", elem_id="train-loss", height=260), "loss"
        )
        log = self._t(gr.Textbox("", label="Log", lines=10, max_lines=10, elem_id="train-log", autoscroll=True), "log")

        inputs = form.inputs
        errors = form.errors

        def checked(values: tuple[Any, ...]) -> tuple[dict[str, Any], Any]:
            data = form.config(values)
            return data, check(data)

        def refuse(message: str, key: str | None) -> list[Any]:
            shown = form.placed(key)
            return [gr.update(value="" if shown else f"⚠ {message}"), *form.error_updates(message, key)]

        def show_command(*values: Any) -> list[Any]:
            data, result = checked(values)
            if result.error:
                return [*refuse(result.error, result.key), gr.update(), gr.update()]
            return ["", *form.error_updates(None, None), to_yaml(data), command_line(data)]

        def start(*values: Any) -> list[Any]:
            data, result = checked(values)
            if result.error:
                return refuse(result.error, result.key)
            try:
                job = self.desk.submit(data, finetune=True)
            except FactoryError as exc:
                return refuse(str(exc), error_key(str(exc)))
            return [f"queued finetune job {job.id}", *form.error_updates(None, None)]

        def refresh(seen: str | None = None) -> list[Any]:
            job = self.desk.latest(("finetune",))
            run = self.desk.training(job)
            text, log_text = progress_text(job, run), self.desk.log_text(job.id) if job else ""
            curve = [p for p in run.get("loss_curve") or [] if "loss" in p]
            now = f"{text}|{len(curve)}|{len(log_text)}"
            ticking = gr.Timer(active=_watching(job))
            if now == seen:  # nothing new: the browser redraws nothing (a plot redraw costs its CPU)
                return [gr.skip(), gr.skip(), gr.skip(), seen, ticking]
            return [text, _frame(curve, ("step", "loss")), log_text, now, ticking]

        def show_preview(*values: Any) -> Any:
            data, result = checked(values)
            if result.error:
                return f'<p class="error">{result.error}</p>'
            return preview_html(result.config)

        def describe_model(*values: Any) -> str:
            data, result = checked(values)
            return result.error or model_summary(result.config)

        def save(path: str, *values: Any) -> list[Any]:
            data, result = checked(values)
            if result.error:
                return [*refuse(result.error, result.key), gr.update()]
            target = Path(path).expanduser()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(to_yaml(data), encoding="utf-8")
            return [
                f"saved to {target}; run it with `{command_line(data, str(target))}`",
                *form.error_updates(None, None),
                gr.update(value=str(target)),
            ]

        def load(path: Any) -> list[Any]:
            source = getattr(path, "name", path)
            try:
                cfg = load_config(str(source))
            except FactoryError as exc:
                return [gr.update(value=f"⚠ {exc}"), *[gr.update() for _ in inputs]]
            return [f"loaded {source}", *[gr.update(value=v) for v in from_config(form.specs, cfg.to_dict())]]

        preview_btn.click(show_preview, inputs, preview)
        command_btn.click(show_command, inputs, [status, *errors, yaml_box, command])
        shown = gr.State(None)  # what this browser shows, so a refresh with nothing new sends nothing
        timer = gr.Timer(REFRESH_SECONDS, active=False)  # ticks while a finetune job is queued or running
        watched = [progress, loss_plot, log, shown, timer]
        start_btn.click(start, inputs, [status, *errors]).then(refresh, None, watched)
        stop_btn.click(lambda: self.desk.stop("finetune"), None, status)
        save_btn.click(save, [settings_path, *inputs], [status, *errors, settings_file])
        load_btn.click(load, settings_path, [status, *inputs])
        settings_file.upload(load, settings_file, [status, *inputs])
        for key in ("model", "template"):
            form.input(key).change(describe_model, inputs, model_info)
        dataset_dir = form.input("dataset_dir")
        dataset_dir.change(
            lambda folder: gr.update(choices=dataset_names(folder or None)), dataset_dir, form.input("dataset")
        )
        timer.tick(refresh, shown, watched, show_progress="hidden")
        demo.load(refresh, None, watched)

    # -- Chat ------------------------------------------------------------------------------------

    def _chat(self) -> None:
        specs = self._specs(groups=("model", "data", "serve"), keys=CHAT_KEYS, plugin_sections=False)
        form = Form(self, "chat")
        form.render(specs, self.values, columns=4)
        tools = self._t(
            gr.Textbox("", label="Tools (JSON list of function specs)", lines=2, elem_id="chat-tools"), "chat.tools"
        )
        with gr.Row():
            load_btn = self._t(gr.Button("Load model", elem_id="chat-load"), "chat.load")
            unload_btn = self._t(gr.Button("Unload", elem_id="chat-unload"), "chat.unload")
        status = gr.Markdown("", elem_id="chat-status")
        chatbot = self._t(gr.Chatbot(label="Conversation", elem_id="chat-history", height=320), "chat.history")
        with gr.Row():
            message = self._t(gr.Textbox("", label="Message", elem_id="chat-message", scale=4), "chat.message")
            send_btn = self._t(gr.Button("Send", variant="primary", elem_id="chat-send", scale=1), "chat.send")
            clear_btn = self._t(gr.Button("Clear", elem_id="chat-clear", scale=1), "chat.clear")

        def load(*values: Any) -> list[Any]:
            result = check(form.config(values))
            if result.error:
                return ["", *form.error_updates(result.error, result.key)]
            try:
                said = self.chat.load(result.config)
            except FactoryError as exc:
                return [f"⚠ {exc}", *form.error_updates(None, None)]
            return [said, *form.error_updates(None, None)]

        def send(text: str, history: list[dict[str, Any]], tool_specs: str, *values: Any) -> Any:
            result = check(form.config(values))
            if result.error:
                yield history, text, f"⚠ {result.error}"
                return
            history = [*history, {"role": "user", "content": text}, {"role": "assistant", "content": ""}]
            try:
                for answer in self.chat.answer(result.config, history[:-1], tool_specs):
                    history[-1] = {"role": "assistant", "content": answer}
                    yield history, "", "…"
            except FactoryError as exc:
                yield history[:-2], text, f"⚠ {exc}"
                return
            yield history, "", "answered"

        load_btn.click(load, form.inputs, [status, *form.errors])
        unload_btn.click(self.chat.unload, None, status)
        send_btn.click(send, [message, chatbot, tools, *form.inputs], [chatbot, message, status])
        message.submit(send, [message, chatbot, tools, *form.inputs], [chatbot, message, status])
        clear_btn.click(lambda: [], None, chatbot)

    # -- Evaluate --------------------------------------------------------------------------------

    def _evaluate(self, demo: gr.Blocks) -> None:
        specs = self._specs(groups=("model", "data", "serve", "eval"), keys=EVAL_KEYS, plugin_sections=False)
        form = Form(self, "eval")
        form.render(specs, self.values, columns=4)
        start_btn = self._t(gr.Button("Start evaluation", variant="primary", elem_id="eval-start"), "eval.start")
        status = gr.Markdown("", elem_id="eval-status")
        progress = self._t(gr.Markdown("", elem_id="eval-progress"), "progress")
        table = self._t(
            gr.Dataframe(label="Results history", elem_id="eval-history", interactive=False), "eval.history"
        )
        with gr.Row():
            first = self._t(gr.Dropdown([], label="First run", elem_id="eval-first"), "eval.first")
            second = self._t(gr.Dropdown([], label="Second run", elem_id="eval-second"), "eval.second")
        chart = self._t(
            gr.BarPlot(
                x="subject", y="score", color="run", label="Compare two runs", elem_id="eval-compare", height=280
            ),
            "eval.compare",
        )

        def start(*values: Any) -> list[Any]:
            data = form.config(values)
            result = check(data)
            if result.error:
                return [
                    gr.update(value="" if form.placed(result.key) else f"⚠ {result.error}"),
                    *form.error_updates(result.error, result.key),
                ]
            try:
                job = self.desk.submit(data, finetune=False)
            except FactoryError as exc:
                key = error_key(str(exc))
                return [gr.update(value="" if form.placed(key) else f"⚠ {exc}"), *form.error_updates(str(exc), key)]
            return [f"queued {job.kind} job {job.id}", *form.error_updates(None, None)]

        def refresh(seen: str | None = None, a: str | None = None, b: str | None = None) -> list[Any]:
            job = self.desk.latest(("eval", "predict"))
            runs = self.desk.runs("eval")
            text = progress_text(job)
            names = [r["run"] for r in runs]
            now = f"{text}|{','.join(names)}"
            ticking = gr.Timer(active=_watching(job))
            if now == seen:
                return [gr.skip()] * 4 + [seen, ticking]
            rows = [
                {
                    "run": r["run"],
                    "task": r["task"],
                    "model": r["model"],
                    "adapter": r.get("adapter") or "",
                    "metric": r["metric"],
                    "score": round(r["score"], 4),
                    "n": r["n"],
                }
                for r in runs
            ]
            a, b = _pair(names, a, b)
            return [
                text,
                _frame(rows, ("run", "task", "model", "adapter", "metric", "score", "n")),
                gr.update(choices=names, value=a),
                gr.update(choices=names, value=b),
                now,
                ticking,
            ]

        def compare(a: str | None, b: str | None) -> Any:
            rows = []
            for ref in (a, b):
                if not ref:
                    continue
                for score in self.desk.run(ref).get("scores", []):
                    if score["scope"] == "subject":
                        rows.append({"subject": score["name"], "score": score["value"], "run": ref})
            return _frame(rows, ("subject", "score", "run"))

        shown = gr.State(None)
        timer = gr.Timer(REFRESH_SECONDS, active=False)  # ticks while an eval or predict job is queued or running
        watched = [progress, table, first, second, shown, timer]
        start_btn.click(start, form.inputs, [status, *form.errors]).then(refresh, None, watched)
        timer.tick(refresh, [shown, first, second], watched, show_progress="hidden")
        demo.load(refresh, None, watched)
        first.change(compare, [first, second], chart)
        second.change(compare, [first, second], chart)

    # -- Export ----------------------------------------------------------------------------------

    def _export(self) -> None:
        specs = self._specs(groups=("model", "output", "export"), keys=EXPORT_KEYS, plugin_sections=False)
        form = Form(self, "export")
        form.render(specs, self.values, columns=3)
        start_btn = self._t(gr.Button("Export", variant="primary", elem_id="export-start"), "export.start")
        status = gr.Markdown("", elem_id="export-status")

        def export(*values: Any) -> list[Any]:
            result = check(form.config(values))
            if result.error:
                shown = form.placed(result.key)
                return ["" if shown else f"⚠ {result.error}", *form.error_updates(result.error, result.key)]
            try:
                out = export_model(result.config, result.config.manager())
            except FactoryError as exc:
                return [f"⚠ {exc}", *form.error_updates(None, None)]
            return [f"wrote {out}", *form.error_updates(None, None)]

        start_btn.click(export, form.inputs, [status, *form.errors])

    # -- Runs ------------------------------------------------------------------------------------

    def _runs(self, demo: gr.Blocks) -> None:
        refresh_btn = self._t(gr.Button("Refresh", elem_id="runs-refresh"), "runs.refresh")
        table = self._t(gr.Dataframe(label="Training runs", elem_id="runs-table", interactive=False), "runs.table")
        with gr.Row():
            with gr.Column():
                first = self._t(gr.Dropdown([], label="First run", elem_id="runs-first"), "runs.first")
                first_plot = gr.LinePlot(x="step", y="loss", elem_id="runs-first-plot", height=240)
            with gr.Column():
                second = self._t(gr.Dropdown([], label="Second run", elem_id="runs-second"), "runs.second")
                second_plot = gr.LinePlot(x="step", y="loss", elem_id="runs-second-plot", height=240)

        def refresh(a: str | None = None, b: str | None = None) -> list[Any]:
            runs = self.desk.runs("train")
            rows = [
                {
                    "run": r["run"],
                    "status": r["status"],
                    "stage": r["stage"],
                    "method": r["method"],
                    "model": r["model"],
                    "final loss": r.get("metrics", {}).get("last_loss"),
                    "steps": (r.get("progress") or {}).get("step"),
                }
                for r in runs
            ]
            names = [r["run"] for r in runs]
            a, b = _pair(names, a, b)  # the two newest, until the user picks others
            return [
                _frame(rows, ("run", "status", "stage", "method", "model", "final loss", "steps")),
                gr.update(choices=names, value=a),
                gr.update(choices=names, value=b),
            ]

        def curve(ref: str | None) -> Any:
            points = [p for p in self.desk.run(ref).get("loss_curve") or [] if "loss" in p] if ref else []
            return _frame(points, ("step", "loss"))

        refresh_btn.click(refresh, [first, second], [table, first, second])
        demo.load(refresh, None, [table, first, second])
        first.change(curve, first, first_plot)
        second.change(curve, second, second_plot)


def _watching(job: Any) -> bool:
    """Whether the page keeps refreshing: while the job it shows is queued or running (a tick costs the browser)."""
    return job is not None and job.status in ("queued", "running")


def _pair(names: list[str], a: str | None, b: str | None) -> tuple[str | None, str | None]:
    """Two runs to compare: the ones chosen while they still exist, else the newest two."""
    a = a if a in names else (names[0] if names else None)
    b = b if b in names else next((n for n in names if n != a), None)
    return a, b


def _frame(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> Any:
    import pandas as pd

    return pd.DataFrame([{c: row.get(c) for c in columns} for row in rows], columns=list(columns))


def build(base: Any) -> gr.Blocks:
    return Page(base).build()


def serve(base: Any, *, host: str, port: int, key: str | None) -> None:
    """Serve the page until interrupted (a key, when set, is asked for at login, any user name)."""
    demo = build(base)
    auth = (lambda _user, password: password == key) if key else None
    demo.queue(default_concurrency_limit=4).launch(
        server_name=host,
        server_port=port,
        auth=auth,
        share=False,
        footer_links=[],
        quiet=True,
        inbrowser=False,
        css=CSS,
        ssr_mode=False,
    )
