"""Chat templates: the text a model sees for a conversation, and which of it is trained.

The pieces live in modules named for what they hold; this module is the import surface the rest
of factory (and ``factory.plugin_api``) uses:

- :mod:`factory.data.template_format`: :class:`Template` (a template as data) and :class:`Segment`;
- :mod:`factory.data.template_render`: rendering a conversation into segments;
- :mod:`factory.data.template_tools`: tool definitions and calls;
- :mod:`factory.data.template_jinja`: :class:`JinjaTemplate`, the tokenizer's own Jinja template;
- :mod:`factory.data.template_library`: YAML files, :class:`TemplateLibrary`, :data:`PACKAGED`;
- :mod:`factory.data.template_auto`: :func:`get_template` and what ``auto`` chooses.

None of them imports torch or transformers: the built-in template plugin imports them at
registration time, and a Jinja template only calls methods of the tokenizer it is given.
"""

from __future__ import annotations

from factory.data.template_auto import detect_template, get_template, model_type_of, template_for_model_type
from factory.data.template_format import AUTO, DEFAULT, GENERIC_TOOLS, InvalidTemplate, Reasoning, Segment, Template
from factory.data.template_jinja import JinjaTemplate, NotPrefixConsistent
from factory.data.template_library import PACKAGED, TemplateLibrary
from factory.data.template_tools import ToolCall, parse_tool_calls, parse_tools, tool_calls

__all__ = [
    "AUTO",
    "DEFAULT",
    "GENERIC_TOOLS",
    "PACKAGED",
    "InvalidTemplate",
    "JinjaTemplate",
    "NotPrefixConsistent",
    "Reasoning",
    "Segment",
    "Template",
    "TemplateLibrary",
    "ToolCall",
    "detect_template",
    "get_template",
    "model_type_of",
    "parse_tool_calls",
    "parse_tools",
    "template_for_model_type",
    "tool_calls",
]
