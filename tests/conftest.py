"""Shared fixtures: real stores (SQLite, and PostgreSQL when a server is reachable), the real embedded model, a
scripted engine for tests that are not about the model, and a real server on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
import uvicorn

from thresher.config import Settings
from thresher.engines import ChatParams, Chunk, TokenLogprob, normalise
from thresher.store import Store

POSTGRES_URL = os.environ.get(
    "THRESHER_TEST_POSTGRES_URL", "postgresql+psycopg://thresher:thresher@127.0.0.1:5432/thresher_test"
)


@dataclass
class ScriptedEngine:
    """An Engine that answers with fixed words, for tests about everything but the model.

    `delay` slows each word so tests can interrupt a stream; `started` is set when a reply begins. Asked for
    log-probabilities, it gives each word -0.25, with up to three alternatives."""

    words: list[str] = field(default_factory=lambda: ["Hello", " there", ",", " friend", "."])
    delay: float = 0.0
    model_id: str = "scripted"
    version: str = "scripted@1"
    started: threading.Event = field(default_factory=threading.Event)
    prompts: list[list[dict[str, str]]] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    params: list[ChatParams] = field(default_factory=list)

    def stream_chat(self, messages: Sequence[dict[str, str]], params: ChatParams) -> Iterator[Chunk]:
        self.prompts.append([dict(m) for m in messages])
        self.prefixes.append(params.prefix)
        self.params.append(params)
        self.started.set()
        n = 0
        for word in self.words[: params.max_tokens]:
            if self.delay:
                time.sleep(self.delay)
            n += 1
            top = [(word, -0.25), ("é", -2.5), ("z", -3.0)][: params.logprobs or 0]
            yield Chunk(text=word, logprobs=[] if params.logprobs is None else [TokenLogprob(word, -0.25, top)])
        finish = "length" if params.max_tokens < len(self.words) else "stop"
        yield Chunk(finish_reason=finish, prompt_tokens=self.count_tokens(messages), completion_tokens=n)

    def next_token_probs(self, messages: Sequence[dict[str, str]], choices: Sequence[str],
                         prefix: str = "") -> dict[str, float]:
        return normalise({c: 1.0 for c in choices})

    def count_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        return sum(len(m["content"].split()) + 3 for m in messages)


def _postgres_available() -> str | None:
    try:
        engine = sa.create_engine(POSTGRES_URL)
        with engine.connect():
            pass
        engine.dispose()
        return None
    except Exception as e:  # any failure to connect means: no server here
        return f"no PostgreSQL server at {POSTGRES_URL} ({type(e).__name__}); .ci/run starts one"


# Each test process gets its own schema, so two runs on one machine (a developer's and CI's) never meet.
PG_SCHEMA = f"thresher_test_{os.getpid()}"


def _reset_postgres(url: str) -> str:
    """A fresh, empty schema for this process; returns the URL that uses it."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE; CREATE SCHEMA {PG_SCHEMA}")
    engine.dispose()
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{PG_SCHEMA}"


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'thresher.db'}"
    reason = _postgres_available()
    if reason:
        pytest.skip(reason)
    return _reset_postgres(POSTGRES_URL)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    st = Store(store_url)
    st.migrate()
    yield st
    st.close()


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    """A local bare repository standing in for the public dataset's git host."""
    from tests_helpers import bare_remote

    return bare_remote(tmp_path / "remote.git")


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.chdir(tmp_path)  # no stray thresher.toml from the developer's directory
    for key in list(os.environ):
        if key.startswith("THRESHER_") and key != "THRESHER_TEST_POSTGRES_URL":
            monkeypatch.delenv(key)
    return Settings(data_dir=tmp_path / "data", judge="off")  # tests that judge turn it on


@pytest.fixture(scope="session", autouse=True)
def _cache_home(tmp_path_factory) -> Iterator[Path]:
    """What the engines derive from model files (the embedded model's 8-bit copy for batched decoding) is made once
    per test session, in the session's temporary folder, not in the user's cache."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(path := tmp_path_factory.mktemp("cache"))
    yield path
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(scope="session")
def embedded_engine():
    from thresher.engines import load

    return load("embedded", n_ctx=2048)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """A real uvicorn server on 127.0.0.1 in a background thread."""

    def __init__(self, app) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def serve(settings: Settings):
    """serve(engine, **setting_overrides) -> a LiveServer context, using a fresh data dir."""
    from thresher.server import create_app

    def start(engine, **overrides) -> LiveServer:
        s = settings.model_copy(update=overrides) if overrides else settings
        return LiveServer(create_app(s, engine=engine))

    return start


@pytest.fixture(scope="session", autouse=True)
def _drop_postgres_schema():
    yield
    if _postgres_available() is None:
        engine = sa.create_engine(POSTGRES_URL)
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE")
        engine.dispose()
