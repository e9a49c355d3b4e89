"""factory webui: the library seen through a browser (Gradio), added to the CLI through the commands hook."""

from factory.plugin_api import hookimpl


@hookimpl
def register_commands(register):
    register(
        "webui",
        "factory_plugin_webui.command:WEBUI",
        description="fine-tune, chat, evaluate and export from a web page",
    )
