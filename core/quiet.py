"""Quiet by default: a run shows factory's progress and results, not its libraries' chatter.

The backends factory's plugins build on announce themselves when imported, whether or not the
run uses them: peft imports bitsandbytes and torchao (through transformers' quantizers) for any
LoRA, and GPT-QModel when it dispatches LoRA layers. None of that can be avoided by importing
less, so it is filtered at its source: each library's own logger, and the warning categories
libraries use for advice to their own developers. ``-v`` (or ``FACTORY_VERBOSE=1``) leaves
everything as the libraries set it.
"""

from __future__ import annotations

import logging
import os
import warnings

VERBOSE_ENV = "FACTORY_VERBOSE"

# logger name -> the level below which its records are dropped, and why it is noise for a user.
NOISY_LOGGERS: dict[str, int] = {
    "torchao": logging.ERROR,  # "Failed to load ... .so" for GPU kernels on a CPU machine
    "torch.utils._pytree": logging.ERROR,  # torchao's enum registration deprecation, twice per process
    "bitsandbytes": logging.ERROR,  # a CPU kernel hint for a package most runs do not use
    "gptqmodel": logging.ERROR,
    "transformers": logging.ERROR,  # dtype and deprecation advice (errors still show)
    "datasets": logging.WARNING,
    "accelerate": logging.ERROR,
    "peft": logging.ERROR,
    "trl": logging.ERROR,
    "huggingface_hub": logging.ERROR,  # "trying to resume download" after a dropped connection it then resumes
    "httpx": logging.WARNING,  # one INFO line per request of the service clients
}
# Loggers that ignore their level: logbar (GPT-QModel's banner, GIL advice and environment notes)
# sets its own level to INFO when it is created, so it is disabled outright.
DISABLED_LOGGERS = ("logbar",)

# Advice to library developers, not to someone running a fine-tune.
_WARNING_CATEGORIES = (FutureWarning, DeprecationWarning, PendingDeprecationWarning)

_applied = False


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


def quiet_libraries() -> None:
    """Drop third-party chatter below each library's level (once per process; a no-op when verbose)."""
    global _applied
    if _applied or verbose():
        return
    _applied = True
    root = logging.getLogger()
    if not root.handlers:
        # A handler of our own makes later logging.basicConfig(level=INFO) calls of libraries (tokenicer
        # calls it on import) no-ops, so their INFO records and factory's details stay out of the run's output;
        # warnings (factory's own included: rows dropped, a fallback taken) still show, one line each.
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("warning (%(name)s): %(message)s"))
        handler.setLevel(logging.WARNING)
        root.addHandler(handler)
    for name, level in NOISY_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for name in DISABLED_LOGGERS:
        logging.getLogger(name).disabled = True
    for category in _WARNING_CATEGORIES:
        warnings.filterwarnings("ignore", category=category)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")  # huggingface_hub sets its level as it is imported, from this
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the fork warning of tokenizers
