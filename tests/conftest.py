"""Shared fixtures: a tiny random Llama with the base model's tokenizer, in a temporary store.

The tiny model has the real tokenizer and chat template (so prompts, special
tokens and end-of-turn behave as in production) but only a few hundred
thousand non-embedding parameters, so every test that needs "a model" runs in
well under a second.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
import sqlalchemy as sa
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from services.common.base_model import find_base_gguf
from services.common.registry import ModelRegistry
from services.rlhf import cpu_features
from tests.harness import (
    SERVICE_TOKEN,  # noqa: F401  (first: sets the suite's token)
    redis_db_url,
    tiny_llama_config,
)

# The whole stack on loopback (`stack`, `feedback`, ...), for the end-to-end and gateway tests.
pytest_plugins = ["tests.stack_fixtures"]

REPO = Path(__file__).resolve().parents[1]
TEST_REDIS_URL = os.environ.get("FLYWHEEL_TEST_REDIS_URL", "redis://127.0.0.1:6399/0")


def pytest_report_header() -> str:
    # Which CPU paths this run takes (tests marked cpu_paths skip or assert by these probes).
    return f"flywheel cpu features: {cpu_features.describe()}"


@pytest.fixture(scope="session")
def base_tokenizer_dir(tmp_path_factory) -> Path:
    """The base model's tokenizer (read once from the shipped GGUF), saved as a plain folder."""
    gguf = find_base_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.model_max_length = 1024
    folder = tmp_path_factory.mktemp("base-tokenizer")
    tokenizer.save_pretrained(folder)
    return folder


def _saved_tiny_llama(base_tokenizer_dir: Path, folder: Path, seed: int) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    torch.manual_seed(seed)
    LlamaForCausalLM(tiny_llama_config(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(base_tokenizer_dir, tmp_path_factory) -> Path:
    """A tiny random Llama and the base tokenizer, saved with ``save_pretrained``."""
    return _saved_tiny_llama(base_tokenizer_dir, tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture
def model_store(tiny_model_dir, tmp_path) -> ModelRegistry:
    """A fresh registry holding the tiny model as ``policy/v0``, promoted."""
    registry = ModelRegistry(tmp_path / "models")
    info = registry.create_version(
        "policy",
        lambda folder: shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True),
        notes="tiny random Llama for tests",
    )
    registry.promote("policy", info.version)
    return registry


@pytest.fixture(scope="session")
def other_tiny_model_dir(base_tokenizer_dir, tmp_path_factory) -> Path:
    """Another tiny random Llama (seed 1): the same shape, different weights."""
    folder = tmp_path_factory.mktemp("other-tiny-model")
    return _saved_tiny_llama(base_tokenizer_dir, folder, seed=1)


@pytest.fixture
def policy_store(tiny_model_dir, other_tiny_model_dir, tmp_path) -> ModelRegistry:
    """policy/v0 (promoted) and policy/v1: tiny random Llamas with different weights."""
    registry = ModelRegistry(tmp_path / "models")
    v0 = registry.create_version(
        "policy", lambda f: shutil.copytree(tiny_model_dir, f, dirs_exist_ok=True)
    )
    registry.create_version(
        "policy",
        lambda f: shutil.copytree(other_tiny_model_dir, f, dirs_exist_ok=True),
        parent=v0.version,
    )
    registry.promote("policy", v0.version)
    return registry


TEST_POSTGRES_URL = os.environ.get(
    "FLYWHEEL_TEST_POSTGRES_URL", "postgresql+psycopg://flywheel@127.0.0.1:5499/flywheel"
)


def _libpq(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A real PostgreSQL (``make test`` starts one); a clear failure if it is not there."""
    try:
        psycopg.connect(_libpq(TEST_POSTGRES_URL), connect_timeout=2).close()
    except psycopg.OperationalError as exc:
        pytest.fail(f"no PostgreSQL at {TEST_POSTGRES_URL} ({exc}); run the tests with `make test`")
    return TEST_POSTGRES_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> Iterator[str]:
    """An empty database of each kind: a SQLite file, or a fresh PostgreSQL database (the
    feedback store's and the trainer's run store's tests run on both)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.sqlite3'}"
        return
    server = request.getfixturevalue("postgres_url")
    name = f"fb_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(server), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield sa.make_url(server).set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(_libpq(server), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url() -> str:
    """A real Redis (``make test`` starts one), this worker's database 0; a clear failure if it
    is not there."""
    url = redis_db_url(TEST_REDIS_URL, 0)
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"no Redis at {TEST_REDIS_URL} ({exc}); run the tests with `make test`")
    finally:
        client.close()
    return url


@pytest.fixture(scope="session")
def real_store(tmp_path_factory) -> Path:
    """The real base model converted by `flywheel models init` (about 25 s, once a session)."""
    store = tmp_path_factory.mktemp("real-store")
    result = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "models", "init"],
        cwd=REPO,
        env={"FLYWHEEL_MODEL_STORE": str(store), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "created policy/v0 (promoted)" in result.stdout
    return store
