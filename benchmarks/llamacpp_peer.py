"""The llama.cpp peer of the inference benchmark, and starting/stopping any HTTP server.

llama-cpp-python has no binary wheel for this platform, so it is built from the sdist into
its own virtual environment (``.venv-llamacpp``, see ``make install-bench-llamacpp``): the
project's venv never sees its dependencies, and the benchmark talks to it only over HTTP.

``CONFIGS`` are the server settings tried by ``inference_throughput --sweep-llamacpp``;
``BEST`` is the one that won there (docs/benchmarks.md has the sweep), so the peer is
measured in its best configuration rather than in its defaults (whose ``n_threads`` is half
the cores).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

DEFAULT_VENV = Path(".venv-llamacpp")
MODEL_ALIAS = "smollm2-135m-instruct"


@dataclass(frozen=True)
class LlamaCppConfig:
    """Server flags (``--name value``) and extra environment of one llama.cpp configuration."""

    name: str
    flags: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


_THREADS = {"n_threads": "2", "n_threads_batch": "2"}
_ACTIVE = {"OMP_WAIT_POLICY": "ACTIVE"}
_LEAN = {**_THREADS, "logits_all": "false"}

CONFIGS = {
    config.name: config
    for config in (
        # The server's defaults (n_threads = cores // 2 = 1, logits for every position).
        LlamaCppConfig("defaults"),
        LlamaCppConfig("2 threads", dict(_THREADS)),
        LlamaCppConfig("2 threads, spin", dict(_THREADS), dict(_ACTIVE)),
        # The server keeps logits for all positions (for logprobs) unless told not to.
        LlamaCppConfig("2 threads, spin, last logits", dict(_LEAN), dict(_ACTIVE)),
        LlamaCppConfig(
            "2 threads, spin, last logits, flash attn",
            {**_LEAN, "flash_attn": "true"},
            dict(_ACTIVE),
        ),
        LlamaCppConfig(
            "2 threads, spin, last logits, n_batch 64",
            {**_LEAN, "n_batch": "64", "n_ubatch": "64"},
            dict(_ACTIVE),
        ),
    )
}
BEST = CONFIGS["2 threads, spin, last logits"]


# --- llama.cpp's own llama-server (tools/build-llama-server.sh) --------------------------------

DEFAULT_LLAMA_SERVER = Path(".bench/llama-server/llama-server")
GGUF_DIR = Path(".bench/gguf")


@dataclass(frozen=True)
class LlamaServerConfig:
    """llama-server flags beyond the model, address and slots (``--sweep-llama-server``)."""

    name: str
    flags: tuple[str, ...] = ()


LLAMA_SERVER_CONFIGS = {
    config.name: config
    for config in (
        LlamaServerConfig("2 threads", ("-t", "2", "-tb", "2")),
        LlamaServerConfig("2 threads, flash attn", ("-t", "2", "-tb", "2", "-fa", "on")),
        LlamaServerConfig("2 threads, ubatch 128", ("-t", "2", "-tb", "2", "-ub", "128")),
        LlamaServerConfig("1 thread", ("-t", "1", "-tb", "1")),
    )
}
LLAMA_SERVER_BEST = LLAMA_SERVER_CONFIGS["2 threads"]


def llama_server_command(
    binary: Path,
    gguf: Path,
    port: int,
    slots: int,
    config: LlamaServerConfig,
    ctx_per_slot: int = 1024,
) -> list[str]:
    """llama-server on ``gguf`` with ``slots`` parallel slots (continuous batching, llama.cpp's
    default), ``ctx_per_slot`` tokens of context each, loopback only, no web UI."""
    if not binary.is_file():
        raise FileNotFoundError(f"{binary} is missing: make install-bench-llamaserver")
    command = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port)]
    command += ["-np", str(slots), "-c", str(slots * ctx_per_slot), "-a", MODEL_ALIAS]
    command += ["--no-webui", *config.flags]
    return command


def gguf_of_type(source: Path, type_name: str, llama_server: Path) -> Path:
    """``source`` (the shipped Q4_1 GGUF) itself, or rewritten as ``type_name`` (BF16, F32,
    ...) by the llama-quantize built beside ``llama_server``: the same weights, dequantized,
    so llama.cpp can be compared at the precision ours computes in. Made once, kept in
    ``.bench/gguf/``."""
    if type_name.upper() == "Q4_1":
        return source
    target = GGUF_DIR / f"{source.stem.rsplit('.', 1)[0]}.{type_name.upper()}.gguf"
    if target.is_file():
        return target
    quantize = llama_server.parent / "llama-quantize"
    if not quantize.is_file():
        raise FileNotFoundError(f"{quantize} is missing: make install-bench-llamaserver")
    GGUF_DIR.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    subprocess.run(
        [str(quantize), "--allow-requantize", str(source), str(partial), type_name.upper()],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    partial.rename(target)
    return target


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(
    venv: Path, gguf: Path, port: int, config: LlamaCppConfig, n_ctx: int = 1024
) -> list[str]:
    """``python -m llama_cpp.server`` from ``venv`` on ``gguf``, loopback only."""
    python = venv / "bin" / "python"
    if not python.is_file():
        raise FileNotFoundError(f"{python} is missing: make install-bench-llamacpp")
    command = [str(python), "-m", "llama_cpp.server", "--model", str(gguf)]
    command += ["--model_alias", MODEL_ALIAS, "--n_ctx", str(n_ctx)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    for name, value in config.flags.items():
        command += [f"--{name}", value]
    return command


def _log_tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_healthy(process: subprocess.Popen, url: str, timeout: float, log_path: Path) -> None:
    """Poll ``url`` until it answers 200; fail early (with the log's end) if the server dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"server exited with {process.returncode} before it was healthy:\n"
                + _log_tail(log_path)
            )
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} not healthy after {timeout:.0f} s:\n" + _log_tail(log_path))


def stop(process: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the server's whole process group (a shell command's children too), then KILL."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        process.wait()


@contextmanager
def running_server(
    command: list[str] | str,
    health_url: str,
    log_path: Path,
    env: dict[str, str] | None = None,
    timeout: float = 180.0,
) -> Iterator[subprocess.Popen]:
    """Start ``command`` (a string runs in a shell) in its own session, wait until
    ``health_url`` answers, and stop it on exit so that no two sides ever share the CPU."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            shell=isinstance(command, str),
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_healthy(process, health_url, timeout, log_path)
        yield process
    finally:
        stop(process)
