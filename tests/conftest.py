"""Shared fixtures for the core's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEMO_DIR = SHARED_DATA / "llamafactory-demo"


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The real SmolLM2-135M-Instruct as a Hugging Face folder (converted once, then cached)."""
    from factory.model.aliases import resolve_alias

    return resolve_alias("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    assert DEMO_DIR.is_dir(), f"shared demo data missing at {DEMO_DIR}"
    return DEMO_DIR


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
