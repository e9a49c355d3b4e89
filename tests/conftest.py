"""Shared fixtures for the core's tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEMO_DIR = SHARED_DATA / "llamafactory-demo"


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The real SmolLM2-135M-Instruct as a Hugging Face folder (converted once, then cached)."""
    from factory.model.aliases import resolve_alias

    return resolve_alias("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_greedy(smollm2_path: Path) -> Callable[[list[dict], int], str]:
    """The inference tests' oracle, loaded once: SmolLM2's greedy answers straight from transformers."""
    from infer_helpers import transformers_greedy

    return transformers_greedy(smollm2_path)


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    assert DEMO_DIR.is_dir(), f"shared demo data missing at {DEMO_DIR}"
    return DEMO_DIR


@pytest.fixture(scope="session")
def sft_args(tiny_causal_lm: Path, demo_dir: Path) -> Callable[..., dict[str, Any]]:
    """``sft_args(out, **extra)``: factory.finetune keywords for the short SFT the training tests vary (the tiny
    model, 32 alpaca_en_demo rows, 30 seeded fp32 steps at a rate that visibly lowers the loss)."""

    def make(out: Path, **extra: Any) -> dict[str, Any]:
        return {
            "model": str(tiny_causal_lm),
            "dataset": "alpaca_en_demo",
            "dataset_dir": str(demo_dir),
            "max_samples": 32,
            "cutoff_len": 128,
            "batch_size": 4,
            "max_steps": 30,
            "learning_rate": 5e-3,
            "logging_steps": 1,
            "output_dir": str(out),
            "precision": "fp32",
            "sample_prompt": None,
            "seed": 3,
            **extra,
        }

    return make


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server for the session (fails, saying how to install it, where there is none)."""
    from factory.store.throwaway import throwaway_postgres

    with throwaway_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh, empty database on the session's PostgreSQL server."""
    return postgres_server.new_database()
