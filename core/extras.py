"""Dependencies by job: what each optional part of factory needs, and one sentence when it is missing.

factory-core installs what training needs; serving, the results database, the generation metrics
and the plots are extras (``pip install 'factory-core[all]'`` for everything, which the README's
first command does). A part whose extra is missing says so, naming the pip command, instead of
failing with an ImportError deep inside.
"""

from __future__ import annotations

import importlib

from factory.errors import ConfigError

# extra -> the modules it provides (import names)
EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": ("fastapi", "uvicorn", "prometheus_client"),
    "store": ("sqlalchemy",),
    "metrics": ("jieba", "nltk", "rouge_chinese"),
    "plots": ("matplotlib",),
}


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here."""
    gone = []
    for module in EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError:
            gone.append(module)
    return gone


def require(extra: str, purpose: str) -> None:
    """Raise one sentence naming the pip command when ``purpose`` needs an extra that is not installed."""
    gone = missing(extra)
    if gone:
        raise ConfigError(
            f"{purpose} needs the '{extra}' extra ({', '.join(gone)} not installed); pip install 'factory-core[{extra}]'"
        )


def hint(extra: str) -> str:
    """The pip command for ``extra``, for warnings about parts that are skipped without it."""
    return f"pip install 'factory-core[{extra}]'"
