"""Built-in chat templates: every entry of the YAML files in ``templates/``.

Registration only reads the YAML files for names and descriptions; a template is built and
validated when a run first uses it (through the lazily imported ``PACKAGED.<name>`` target).
"""

from __future__ import annotations

from factory.data.template import PACKAGED
from factory.hookspecs import hookimpl


@hookimpl
def register_templates(register):
    PACKAGED.register_all(register, "factory.data.template:PACKAGED")
