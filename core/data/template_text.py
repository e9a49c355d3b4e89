"""The text pieces every template module shares: segments, placeholders, filling a format.

Below both the template format (the data) and its renderer, so that neither imports the other
to reach them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}")
CONTENT = "{{content}}"


@dataclass(frozen=True)
class Segment:
    """A piece of rendered text; ``trainable`` marks response text the loss is computed on."""

    text: str
    trainable: bool


def fill(fmt: str, values: Mapping[str, str]) -> str:
    """``fmt`` with its placeholders replaced; one regex pass, so inserted text is never scanned again."""
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], fmt)
