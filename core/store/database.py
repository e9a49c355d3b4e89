"""Opening the database: where it is, its tables, and writes that wait out a busy SQLite file.

Where the database lives: ``results_db`` in the config (a file path means SQLite, anything with
``://`` is an SQLAlchemy URL), else the ``FACTORY_RESULTS_DB`` environment variable, else
``results.db`` in the user's data folder (platformdirs).

SQLite files are switched to write-ahead logging (WAL): readers never wait for the writer and a
commit costs one sync instead of three; the file must then be on a local disk (several machines
share a PostgreSQL database instead). SQLite allows one writer at a time. Every write here opens
its transaction with ``BEGIN IMMEDIATE``, so it takes the write lock before reading anything: with pysqlite's default
deferred transactions, a transaction that read first and then wants to write can be refused at
once (SQLite returns "database is locked" without waiting, to avoid a deadlock), whatever the
busy timeout. With the lock taken first, a busy file is simply waited for (the busy timeout), and
a write that still finds it locked is retried until ``timeout`` seconds have passed.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Float, create_engine, event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import FunctionElement

from factory.errors import ConfigError, FactoryError
from factory.store.tables import Base

ENV = "FACTORY_RESULTS_DB"
DEFAULT_TIMEOUT = 10.0
T = TypeVar("T")


class StoreError(FactoryError):
    """A database that refused a read or a write (locked, read-only, another schema, unreachable)."""


class epoch_now(FunctionElement):  # noqa: N801 - an SQL function, named like one
    """The database's clock in seconds since 1970: every machine sharing a database agrees on it."""

    type = Float()
    inherit_cache = True


@compiles(epoch_now)
def _epoch_now(element: Any, compiler: Any, **kw: Any) -> str:
    return "EXTRACT(EPOCH FROM CLOCK_TIMESTAMP())"


@compiles(epoch_now, "sqlite")
def _epoch_now_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"


def default_location() -> str:
    """The database used when the config names none."""
    from platformdirs import user_data_path

    return os.environ.get(ENV) or str(user_data_path("factory") / "results.db")


def database_url(value: str | None) -> str:
    """An SQLAlchemy URL from ``results_db``: a URL as given, a file path as SQLite."""
    value = value or default_location()
    if "://" in value:
        return value
    path = Path(value).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"results_db '{value}' cannot be created ({exc.strerror}); give a path in a folder you can write"
        ) from None
    return f"sqlite:///{path.resolve()}"


def shown(url: str) -> str:
    """The URL for messages, without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def reason(exc: BaseException) -> str:
    """The first line of what the database driver said."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def _locked(exc: OperationalError) -> bool:
    text = str(exc.orig).lower()
    return "locked" in text or "busy" in text


class Database:
    """An engine on one database, its tables created (and checked) on first open."""

    def __init__(self, location: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = database_url(location)
        self.shown = shown(self.url)
        self.timeout = timeout
        self.engine = _connect(self.url, timeout)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        # the same pool, with the option that makes SQLite take its write lock up front
        self._writer = self.engine.execution_options(factory_write=True)
        self._create_tables()

    def _create_tables(self) -> None:
        """Create what is missing; a read-only or busy database that has them all is only read."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                with self.engine.begin() as connection:
                    Base.metadata.create_all(connection)
                break
            except SQLAlchemyError as exc:
                # another process creating the same tables at the same moment: look again
                text = reason(exc).lower()
                if time.monotonic() < deadline and any(
                    word in text for word in ("locked", "already exists", "duplicate")
                ):
                    time.sleep(0.05)
                    continue
                raise ConfigError(
                    f"results_db '{self.shown}' cannot be opened ({reason(exc)}); "
                    "check the path or URL and its permissions"
                ) from None
        self._check_schema()

    def _check_schema(self) -> None:
        """Refuse a table of ours that lacks a column we write (made by another program or version)."""
        try:
            inspector = inspect(self.engine)
            for table in Base.metadata.sorted_tables:
                have = {column["name"] for column in inspector.get_columns(table.name)}
                missing = [column.name for column in table.columns if column.name not in have]
                if missing:
                    raise ConfigError(
                        f"results_db '{self.shown}' holds a table '{table.name}' without the column '{missing[0]}' "
                        "(another program's or another version's table); point results_db at a new database"
                    )
        except SQLAlchemyError as exc:
            raise ConfigError(
                f"results_db '{self.shown}' cannot be read ({reason(exc)}); check the path or URL"
            ) from None

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session for reading (its errors become one StoreError sentence)."""
        try:
            with Session(self.engine, expire_on_commit=False) as session:
                yield session
        except SQLAlchemyError as exc:
            raise StoreError(f"the database '{self.shown}' could not be read ({reason(exc)})") from exc

    def write(self, work: Callable[[Session], T]) -> T:
        """Run ``work(session)`` in one write transaction and commit it; retried while SQLite is locked."""
        deadline = time.monotonic() + self.timeout
        pause = 0.05
        while True:
            try:
                with Session(self._writer, expire_on_commit=False) as session:
                    value = work(session)
                    session.commit()
                    return value
            except OperationalError as exc:
                if self.is_sqlite and _locked(exc) and time.monotonic() < deadline:
                    time.sleep(pause)
                    pause = min(pause * 2, 1.0)
                    continue
                raise StoreError(f"the database '{self.shown}' refused the write ({reason(exc)})") from exc
            except SQLAlchemyError as exc:
                raise StoreError(f"the database '{self.shown}' refused the write ({reason(exc)})") from exc

    def dispose(self) -> None:
        self.engine.dispose()


def _connect(url: str, timeout: float) -> Engine:
    """An engine, or a ConfigError naming the URL and the fix."""
    text = shown(url)
    try:
        parsed = make_url(url)
        sqlite = parsed.get_backend_name() == "sqlite"
        engine = create_engine(parsed, connect_args={"timeout": timeout} if sqlite else {}, pool_pre_ping=not sqlite)
    except NoSuchModuleError:  # a subclass of ArgumentError: the scheme names no dialect or driver
        raise ConfigError(
            f"results_db '{text}' names a database or driver SQLAlchemy does not know; check the URL's scheme "
            "(e.g. sqlite:///PATH, postgresql+psycopg://...)"
        ) from None
    except ArgumentError:
        raise ConfigError(
            f"results_db '{text}' is not a database URL; give a file path or an SQLAlchemy URL such as "
            "postgresql+psycopg://user@host/db"
        ) from None
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"results_db '{text}' needs the Python package '{exc.name}', which is not installed; pip install the driver for that database"
        ) from None
    if sqlite:

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # transactions are begun below, not by pysqlite
            try:  # readers never wait for the writer, and a commit costs one sync instead of three
                dbapi_connection.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError:  # a file that cannot switch now keeps its journal: slower, as correct
                pass

        @event.listens_for(engine, "begin")
        def _begin(connection: Any) -> None:
            write = connection.get_execution_options().get("factory_write")
            connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine
