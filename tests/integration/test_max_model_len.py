"""A prompt longer than engine.max_model_len gets a 400 naming the limit, streamed or not.

The synthetic backend through the head, engine.max_model_len = 8 (prompt tokens are the
prompt's words): prompts of 8 and 20 words, plain and with "stream": true, on /v1/completions
and /v1/chat/completions, each get 400 with an OpenAI error object (invalid_request_error,
code context-length-exceeded) whose message names engine.max_model_len and the prompt's
tokens, never a 200 with empty text. A 7-word prompt, which leaves room for one token, is served
with that one token ("length"). The rank keeps serving throughout.
"""

import json

import harness
from harness import Daemon, check, check_eq, check_in, log, run_test

MAX_MODEL_LEN = 8


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def check_refused(port: int, path: str, body: dict, tokens: int, what: str) -> None:
    r = harness.request(port, "POST", path, body)
    check_eq(r.status, 400, f"{what}: status")
    check_in("application/json", r.headers.get("content-type", ""), f"{what}: content type")
    error = json.loads(r.body)["error"]
    check_eq(error["type"], "invalid_request_error", f"{what}: error type")
    check_eq(error["code"], "context-length-exceeded", f"{what}: error code")
    check_in(f"maximum context length is {MAX_MODEL_LEN} tokens (engine.max_model_len)", error["message"],
             f"{what}: the message names the limit")
    if tokens:
        check_in(f"has {tokens} tokens", error["message"], f"{what}: the message names the prompt's tokens")


def main() -> None:
    with Daemon({"engine": {"max_model_len": MAX_MODEL_LEN, "default_max_tokens": 4}}, name="max-model-len") as d:
        d.wait_ready(30)
        for n in (MAX_MODEL_LEN, 20):
            for stream in (False, True):
                check_refused(d.port, "/v1/completions", {"model": "synthetic", "prompt": words(n), "max_tokens": 4,
                                                          "stream": stream},
                              n, f"completions, {n}-word prompt, stream={stream}")
                # The chat rendering adds its own words: the count is the engine's.
                check_refused(d.port, "/v1/chat/completions",
                              {"model": "synthetic", "messages": [{"role": "user", "content": words(n)}],
                               "stream": stream},
                              0, f"chat, {n}-word message, stream={stream}")
        log("--- a prompt that leaves room for one token is served")
        status, body = harness.post_json(d.port, "/v1/completions",
                                         {"model": "synthetic", "prompt": words(MAX_MODEL_LEN - 1), "max_tokens": 4})
        check_eq(status, 200, "status")
        check_eq(body["choices"][0]["finish_reason"], "length", "finish_reason")
        check_eq(body["usage"]["completion_tokens"], 1, "completion tokens")
        check_eq(body["choices"][0]["text"], harness.synthetic_text(words(MAX_MODEL_LEN - 1), 0, 1), "text")
        check_eq(d.stop(), 0, "exit status after SIGTERM")


if __name__ == "__main__":
    run_test(main, timeout=90)
