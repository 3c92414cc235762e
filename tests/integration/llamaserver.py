r"""A real OpenAI-compatible engine for the integration tests: llama-cpp-python's server.

The server runs from build-venv/ (made by `scripts/test-venv`; have_llama() says whether it is
there) on a tiny random-weight model that tests/support/tiny_model.py writes (write_model()), so
nothing is downloaded. A request takes milliseconds (~0.2-1 ms a token on one core); the server
is ready ~1-4 s after it starts (Python imports; the model loads in ~20 ms).

    with start_server(write_model(os.path.join(tmp, "tiny.gguf"))) as srv:
        post to srv.base_url + "/v1/chat/completions" ...
    # or, as dpengined's engine.command:  server_command(model_path)  ("{port}" left in)

What the engine does (llama-cpp-python 0.3.36, measured with plain HTTP and the openai SDK):

Determinism. Every request that sets temperature 0, or a seed (0 included; -1 and 4294967295
mean "random"; larger values wrap modulo 2**32), gives a byte-identical answer apart from "id"
and "created", whether sent twice in a row, after other requests, or to a restarted server:
completions, chat, both streamed (same chunks), logprobs, top_logprobs, presence_penalty,
response_format json_object, top_k / min_p, stop. That needs the one-token batches of
server_command() (see there); without them logprobs differ in the 6th digit depending on the
previous request. A request with neither (temperature defaults to 0.8) gets a sampler seed
derived from the previous request's, starting from --seed: identical only for an identical
sequence of requests since the server started. So compare answers (router vs direct) only on
requests with temperature 0 or a seed. "top_k": 1 alone is also greedy.

Request quirks:
  - Completion prompts: a string or a list of ONE string. Token ids ([72,101,108,108,111], or
    nested) -> 500 (pydantic: "Input should be a valid string"); a list of two prompts -> 500
    with an empty message (an assert). n and best_of are ignored (always one choice).
  - stream_options is ignored: no usage chunk in streams (include_usage or not); streamed text
    joins to exactly the non-streamed text.
  - max_tokens absent (chat's default), null, 0 or negative: generate until <|im_end|> or the
    context is full (finish_reason "length"; with temperature 0 the test chat runs to 256
    tokens in ~0.2-0.4 s). Completions default to 16.
  - prompt longer than n_ctx -> 400 {"error": {"message": "This model's maximum context length
    is 256 tokens, however you requested ...", "type": "invalid_request_error", "param":
    "messages", "code": "context_length_exceeded"}}; but a prompt that fits with max_tokens
    that does not is served, max_tokens cut to what fits (finish_reason "length"). STREAMED,
    the too-long prompt gets 200 and an empty event stream (no data, no [DONE]).
  - Invalid parameters (max_tokens "abc", top_p 2, prompt of ints) -> 500, not 400/422:
    {"error": {"message": "1 validation error: ... 'int_parsing' ... traceback text",
    "type": "internal_server_error", "param": null, "code": null}}. Malformed JSON -> 500
    text/plain "Internal Server Error". The openai SDK retries 500s (max_retries=2 by default:
    3 requests, ~1.4 s) before raising InternalServerError.
  - Unknown fields are ignored; any "model" is accepted (it is echoed back in the answer).
  - response_format json_object works (grammar-constrained; the tiny model answers "{}").

The wire:
  - SSE: Content-Type text/event-stream; charset=utf-8, Transfer-Encoding: chunked, one event
    per chunk: b"data: {json}\n\n" (LF, not CRLF; JSON with ", " / ": " separators, while
    non-streamed bodies are compact), ending with b"data: [DONE]\n\n". Chat streams open with
    a {"delta": {"role": "assistant"}} chunk and close with {"delta": {}, "finish_reason": ..};
    completion streams close with {"text": "", "finish_reason": ..}. Every 15 s that a stream
    stays open it gets a comment b": ping - <utc time>\n\n" (sse-starlette's keep-alive;
    --disable_ping_events true turns it off).
  - Headers of a streamed answer are sent at once (200), even while the request waits for the
    model; the data comes when it gets its turn.
  - No /health, /metrics, /slots (404). GET /v1/models -> 200 {"object": "list", "data":
    [{"id": "tiny", ...}]} once ready (the model loads before the port opens), but it takes the
    model lock: it waits behind running and queued generations (seconds under load). GET /docs
    (1 KB) answers without the lock. HEAD gets 405. Also POST /extras/tokenize,
    /extras/detokenize.

Concurrency: one generation at a time (an asyncio lock, FIFO); others wait, streams included.
With the server's default --interrupt_requests true, a stream is cut short as soon as any other
request (even GET /v1/models) waits for the lock: it ends with data: [DONE] and no
finish_reason. server_command() turns that off.

Client disconnect: a stream stops generating once the client is gone (checked after each
token; the log says "Disconnected from client"); a non-streamed request runs to its end.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Iterator, Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV = os.path.join(REPO, "build-venv")

# Name the server answers to ("model" in requests, the id in /v1/models). Without an alias it
# would be the model's file path, which differs per test run.
MODEL_ALIAS = "tiny"
# Context size. The tiny model was "trained" for 256 positions; more would only make the
# no-max_tokens chat case (which runs to the end of the context) slower.
N_CTX = 256
# GET path that answers 200 once the server is ready. llama-cpp-python has no /health; the model
# is loaded before uvicorn listens, so /v1/models answers 200 as soon as anything answers at all.
# It takes the model lock, though, so it waits while a generation is running.
HEALTH_PATH = "/v1/models"
# GET path that answers 200 without taking the model lock (FastAPI's 1 KB docs page), for a
# liveness probe that must not queue behind generations.
LIVENESS_PATH = "/docs"
TINY_MODEL = os.path.join(REPO, "tests", "support", "tiny_model.py")


def venv_python() -> str:
    """The Python of build-venv/ (made by scripts/test-venv)."""
    return os.path.join(VENV, "bin", "python")


def have_llama() -> bool:
    """Whether build-venv/ exists with the engine installed (scripts/test-venv's stamp)."""
    return os.access(venv_python(), os.X_OK) and os.path.exists(os.path.join(VENV, ".packages-stamp"))


def missing_llama_message() -> str:
    return f"{VENV} is missing or incomplete: run scripts/test-venv first (it installs llama-cpp-python[server])"


def require_venv() -> None:
    """Makes this test run in build-venv/'s Python (where the openai SDK is; it sees Debian's
    packages too): re-executes the script there when it was started by another interpreter.
    Without the venv the test fails, saying how to make it: these tests never skip."""
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    if not have_llama():
        print(f"FAIL: {missing_llama_message()}", file=sys.stderr, flush=True)
        sys.exit(1)
    os.execv(venv_python(), [venv_python(), *sys.argv])


def write_model(path: str) -> str:
    """Writes the tiny GGUF model to `path`; returns `path`.

    Always with the venv's Python: tiny_model needs numpy and gguf, which the system Python
    lacks, and the venv's pinned versions are what make the file the same everywhere."""
    if not have_llama():
        raise RuntimeError(missing_llama_message())
    subprocess.run([venv_python(), TINY_MODEL, path], check=True, timeout=120)
    return path


def server_command(model_path: str, port_placeholder: str = "{port}", host: str = "127.0.0.1") -> list[str]:
    """argv that starts llama-cpp-python's server on `model_path`. The port is `port_placeholder`
    verbatim (for dpengined's engine.command, which substitutes "{port}"); pass a number as a
    string to get a command to run directly."""
    return [
        venv_python(), "-m", "llama_cpp.server",
        "--model", model_path,
        "--model_alias", MODEL_ALIAS,
        "--host", host,
        "--port", str(port_placeholder),
        "--n_ctx", str(N_CTX),
        # One thread: leaves the other core to the code under test, and the tiny model is no
        # faster on two.
        "--n_threads", "1",
        "--n_threads_batch", "1",
        # Prompts are evaluated one token at a time. With bigger batches the prompt's logits come
        # out of a different (batched) matmul kernel than a cached prefix plus a one-token
        # suffix, so the same request gave logprobs differing in the 6th digit depending on what
        # the previous request was (llama-cpp-python reuses the KV cache's common prefix).
        # One-token batches make every answer bit-identical whatever came before; the tiny
        # model's prompts still take only milliseconds (~0.3 ms a token).
        "--n_batch", "1",
        "--n_ubatch", "1",
        # Requests that set neither a seed nor temperature 0 get their sampler seed from a chain
        # that starts here and advances with every request: reproducible only for the same
        # sequence of requests since start (see the module docstring).
        "--seed", "1234",
        # Default true: a streamed answer is cut short (data: [DONE], no finish_reason) as soon
        # as another request waits for the model, even a GET /v1/models health probe.
        "--interrupt_requests", "false",
    ]


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(port: int, path: str, timeout: float = 2.0) -> Optional[int]:
    """Status of GET path, or None when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return None
    finally:
        conn.close()


class Server:
    """A running llama-cpp-python server (see start_server)."""

    def __init__(self, proc: subprocess.Popen, port: int, log_path: str):
        self.proc = proc
        self.port = port
        self.log_path = log_path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to its process group (uvicorn shuts down cleanly in well under a second),
        SIGKILL if it is still there after `timeout` s."""
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)


@contextlib.contextmanager
def start_server(model_path: str, port: Optional[int] = None, log_path: Optional[str] = None,
                 ready_timeout: float = 60.0, extra_args: Optional[list[str]] = None) -> Iterator[Server]:
    """Starts the server on `model_path` and waits (at most ready_timeout s) until HEALTH_PATH
    answers 200; yields a Server; kills it on exit. Its stdout+stderr (llama.cpp's load log and
    per-request timings) go to log_path (default: beside the model)."""
    if not have_llama():
        raise RuntimeError(missing_llama_message())
    port = port or free_port()
    log_path = log_path or os.path.splitext(model_path)[0] + f"-server-{port}.log"
    argv = server_command(model_path, str(port)) + (extra_args or [])
    with open(log_path, "wb") as log:
        # Own process group, so stop() can kill anything it might spawn.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = Server(proc, port, log_path)
    try:
        deadline = time.monotonic() + ready_timeout
        while http_status(port, HEALTH_PATH) != 200:
            if proc.poll() is not None:
                raise RuntimeError(f"llama server exited with {proc.returncode}:\n{server.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama server not ready in {ready_timeout} s:\n{server.log()[-4000:]}")
            time.sleep(0.1)
        yield server
    finally:
        server.stop()
