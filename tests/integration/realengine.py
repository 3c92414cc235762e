"""Shared pieces of the tests that put dpengine in front of a real engine (llama-cpp-python's
server, see llamaserver.py) and compare each answer through the head with the same engine's
own answer: test_real_engine (DP=1) and test_real_engine_multinode (DP=2 on two nodes).

  - Endpoint:  one place to ask (the head, or an engine server directly): its port, the
               namespace to connect from (None: this one), an openai SDK client, and
               raw(): one plain-HTTP exchange, keeping the status, the Content-Type and the
               body's bytes (a stream's split into its events).
  - Case:      one request of the matrix, as a JSON body for plain HTTP and, where the SDK
               can express it, as the SDK's keyword arguments.
  - Comparer:  asks both endpoints (the head and the engine), by plain HTTP and by the SDK,
               and checks the answers are the same apart from "id" and "created"
               (compare_raw(), compare_sdk()); case_checks() adds what single cases check.
  - matrix():  the cases, and engine_config(): the [engine] table that runs the server.

Why alternately (Comparer(alternate=True), the direct request first in one exchange and the
routed one first in the next): the engine's sampler state may depend on the requests before (a
request with neither a seed nor temperature 0 gets a seed derived from the previous one's).
Every case sets temperature 0 or a seed, which the engine answers identically whatever came
before; mixing the order makes any history dependence show as a mismatch rather than hide.
With a reference engine of its own (alternate=False), each routed request's twin goes right
after it.

Only loopback (or the test's own namespaces) is ever connected to.
"""

from __future__ import annotations

import http.client
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import openai

import llamaserver

from harness import check, check_eq, log, tail

# The top-level "id" and "created" of an answer (compact JSON in whole bodies, ", " / ": "
# separators in stream events): the only parts that differ between two identical requests.
_ID = re.compile(rb'"id": ?"[^"]*"')
_CREATED = re.compile(rb'"created": ?\d+')


def normalise_bytes(data: bytes) -> bytes:
    """`data` with its first "id" and "created" values blanked (they come first in every
    answer the engine writes, before any text that could contain such words)."""
    data = _ID.sub(b'"id":"-"', data, count=1)
    return _CREATED.sub(b'"created":0', data, count=1)


def normalise(obj: Any) -> Any:
    """A decoded answer (or SDK model_dump) without its top-level "id" and "created"."""
    if isinstance(obj, dict):
        return {k: v for k, v in obj.items() if k not in ("id", "created")}
    return obj


def split_events(body: bytes) -> list[bytes]:
    """An event stream's body as its events, each with its blank-line end (LF or CRLF)."""
    events = []
    for m in re.finditer(rb"(?:.+?)(?:\r?\n\r?\n|\Z)", body, re.S):
        if m.group(0):
            events.append(m.group(0))
    return events


def event_json(event: bytes) -> Any:
    """The decoded data of one event ("[DONE]" as is; None for a comment)."""
    lines = [l[5:].lstrip(b" ") for l in event.splitlines() if l.startswith(b"data:")]
    if not lines:
        return None
    data = b"\n".join(lines)
    return "[DONE]" if data == b"[DONE]" else json.loads(data)


@dataclass
class Raw:
    status: int
    content_type: str
    body: bytes
    events: Optional[list[bytes]] = None  # for text/event-stream

    def json(self) -> Any:
        return json.loads(self.body)

    def summary(self) -> str:
        return f"{self.status} {self.content_type!r} {tail(self.body.decode('utf-8', 'replace'), 600)}"


class Endpoint:
    """Where to ask: `port` on 127.0.0.1, from namespace `ns` (None: the caller's own)."""

    def __init__(self, name: str, port: int, ns=None, timeout: float = 60.0):
        self.name, self.port, self.ns, self.timeout = name, port, ns, timeout
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0,
                                    timeout=timeout)

    def call(self, fn: Callable, *args, **kwargs):
        if self.ns is None:
            return fn(*args, **kwargs)
        return self.ns.call(fn, *args, **kwargs)

    def raw(self, path: str, body: dict | bytes) -> Raw:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.call(self._raw, path, data)

    def _raw(self, path: str, data: bytes) -> Raw:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            body = resp.read()
            ctype = resp.getheader("Content-Type") or ""
            out = Raw(resp.status, ctype, body)
            if ctype.split(";")[0].strip().lower() == "text/event-stream":
                out.events = split_events(body)
            return out
        finally:
            conn.close()

    def sdk(self, kind: str, kwargs: dict) -> tuple:
        """One SDK call: ("ok", dump) | ("stream", [chunk dumps]) | ("error", status, body)."""
        return self.call(self._sdk, kind, kwargs)

    def _sdk(self, kind: str, kwargs: dict) -> tuple:
        api = self.client.completions if kind == "completions" else self.client.chat.completions
        try:
            if kwargs.get("stream"):
                with api.create(**kwargs) as stream:
                    return ("stream", [chunk.model_dump() for chunk in stream])
            return ("ok", api.create(**kwargs).model_dump())
        except openai.APIStatusError as e:
            return ("error", e.status_code, e.body)


COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"


@dataclass
class Case:
    """One request. `body`: the JSON body (dict, or bytes sent as they are) for plain HTTP.
    `sdk`: the SDK's keyword arguments, or None where the SDK cannot express it (or would
    hide what matters); engine-specific parameters go in its extra_body. `status`: the
    status the engine answers with (checked on both answers)."""
    name: str
    path: str
    body: dict | bytes
    sdk: Optional[dict] = None
    status: int = 200
    extra: dict = field(default_factory=dict)  # anything a check wants to keep

    @property
    def kind(self) -> str:
        return "completions" if self.path == COMPLETIONS else "chat"


def compare_raw(case: Case, routed: Raw, direct: Raw) -> None:
    what = f"{case.name} (plain HTTP)"
    check(routed.status == direct.status == case.status,
          f"{what}: status {case.status} through the head and directly",
          f"head: {routed.summary()}\ndirect: {direct.summary()}")
    check_eq(routed.content_type, direct.content_type, f"{what}: Content-Type through the head")
    if direct.events is None:
        check(normalise_bytes(routed.body) == normalise_bytes(direct.body),
              f"{what}: body byte for byte ({len(direct.body)} bytes, id/created aside)",
              f"head: {routed.body[:1500]!r}\ndirect: {direct.body[:1500]!r}")
        return
    check(routed.events is not None, f"{what}: an event stream through the head too")
    r = [normalise_bytes(e) for e in routed.events]
    d = [normalise_bytes(e) for e in direct.events]
    check_eq(len(r), len(d), f"{what}: number of events through the head")
    for i, (a, b) in enumerate(zip(r, d)):
        if a != b:
            check(False, f"{what}: event {i} byte for byte (id/created aside)", f"head: {a!r}\ndirect: {b!r}")
    log(f"  ok: {what}: {len(d)} events, each byte for byte (id/created aside)")
    # Decoded, to name what the events carry (equal bytes make these equal too).
    facts = stream_facts([event_json(e) for e in direct.events])
    check_eq(stream_facts([event_json(e) for e in routed.events]), facts,
             f"{what}: finish reasons and usage of the events")


def stream_facts(chunks: list) -> tuple[list, list]:
    """Finish reasons and usage objects of a stream's chunks (dumps or decoded events)."""
    finish, usage = [], []
    for c in chunks:
        if not isinstance(c, dict):
            continue
        for choice in c.get("choices") or []:
            if choice.get("finish_reason"):
                finish.append(choice["finish_reason"])
        if c.get("usage"):
            usage.append(c["usage"])
    return finish, usage


def compare_sdk(case: Case, routed: tuple, direct: tuple) -> None:
    what = f"{case.name} (openai SDK)"
    check_eq(routed[0], direct[0], f"{what}: kind of answer through the head")
    if direct[0] == "error":
        check(routed[1] == direct[1] == case.status, f"{what}: {case.status} through the head and directly",
              (routed, direct))
        check_eq(routed[2], direct[2], f"{what}: the engine's error body")
        return
    if direct[0] == "ok":
        check_eq(normalise(routed[1]), normalise(direct[1]), f"{what}: the answer (id/created aside)")
        return
    r = [normalise(c) for c in routed[1]]
    d = [normalise(c) for c in direct[1]]
    check_eq(len(r), len(d), f"{what}: number of chunks through the head")
    for i, (a, b) in enumerate(zip(r, d)):
        if a != b:
            check(False, f"{what}: chunk {i} (id/created aside)", f"head: {a}\ndirect: {b}")
    log(f"  ok: {what}: {len(d)} chunks, each the same (id/created aside)")
    check_eq(stream_facts(r), stream_facts(d), f"{what}: finish reasons and usage")


class Comparer:
    """Runs cases against `routed` (the head) and `direct` (the engine itself, or a reference
    engine with the same model and settings). alternate: the direct request first in one
    exchange and the routed one first in the next; else the routed one, then its twin."""

    def __init__(self, routed: Endpoint, direct: Endpoint, alternate: bool = True):
        self.routed, self.direct, self.alternate = routed, direct, alternate
        self.turn = 0

    def pair(self, fn: Callable[[Endpoint], Any]) -> tuple[Any, Any]:
        """(routed answer, direct answer), asked in this turn's order."""
        self.turn += 1
        if self.alternate and self.turn % 2:
            d = fn(self.direct)
            r = fn(self.routed)
        else:
            r = fn(self.routed)
            d = fn(self.direct)
        return r, d

    def raw(self, case: Case) -> tuple[Raw, Raw]:
        log(f"- {case.name}: plain HTTP")
        r, d = self.pair(lambda ep: ep.raw(case.path, case.body))
        compare_raw(case, r, d)
        return r, d

    def sdk(self, case: Case) -> tuple[tuple, tuple]:
        log(f"- {case.name}: openai SDK")
        r, d = self.pair(lambda ep: ep.sdk(case.kind, case.sdk))
        compare_sdk(case, r, d)
        return r, d

    def run(self, case: Case) -> tuple[Raw, Raw, Optional[tuple], Optional[tuple]]:
        r, d = self.raw(case)
        rs = ds = None
        if case.sdk is not None:
            rs, ds = self.sdk(case)
        return r, d, rs, ds


def naive_chat_prompt(messages: list[dict]) -> str:
    """A "role: content" rendering of a conversation: what an engine that ignored the model's
    chat template (or a front-end that rendered the chat itself) would evaluate."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


# ---------------------------------------------------------------------------------------------
# The matrix

M = llamaserver.MODEL_ALIAS
MESSAGES = [{"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "Hello, how does the router pick an engine?"}]
# A conversation the model (temperature 0) answers until the context is full: 220 tokens.
UNBOUNDED = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Write JSON."}]
# ~800 tokens: far beyond the 256 of the context.
LONG_PROMPT = " ".join(["request"] * 400)


def engine_config(model_path: str, **extra) -> dict:
    return {"backend": "http", "command": llamaserver.server_command(model_path, "{port}"), "model": M,
            "health_path": llamaserver.LIVENESS_PATH, "ready_timeout": 120.0, **extra}


def sdk_of(body: dict, extra_body: dict | None = None) -> dict:
    kwargs = dict(body)
    if extra_body:
        kwargs["extra_body"] = extra_body
    return kwargs


def matrix() -> list[Case]:
    completion = {"model": M, "prompt": "The router sends each request", "max_tokens": 16, "temperature": 0}
    chat = {"model": M, "messages": MESSAGES, "max_tokens": 12, "temperature": 0}
    stream = {"stream": True, "stream_options": {"include_usage": True}}
    cases = [
        Case("completion", COMPLETIONS, completion, sdk_of(completion)),
        Case("completion streamed with include_usage", COMPLETIONS, completion | stream, sdk_of(completion | stream)),
        Case("chat", CHAT, chat, sdk_of(chat)),
        Case("chat streamed", CHAT, chat | stream, sdk_of(chat | stream)),
        Case("token-id prompt", COMPLETIONS, completion | {"prompt": [72, 101, 108, 108, 111]},
             sdk_of(completion | {"prompt": [72, 101, 108, 108, 111]}), status=500),
        Case("a list of two prompts", COMPLETIONS, completion | {"prompt": ["Hello", "The router"]},
             sdk_of(completion | {"prompt": ["Hello", "The router"]}), status=500),
        Case("completion with logprobs", COMPLETIONS, completion | {"logprobs": 3, "max_tokens": 8},
             sdk_of(completion | {"logprobs": 3, "max_tokens": 8})),
        Case("chat with logprobs and top_logprobs", CHAT, chat | {"logprobs": True, "top_logprobs": 3, "max_tokens": 8},
             sdk_of(chat | {"logprobs": True, "top_logprobs": 3, "max_tokens": 8})),
        Case("presence_penalty (seeded)", COMPLETIONS,
             {"model": M, "prompt": "the the the the", "max_tokens": 24, "presence_penalty": 1.5, "seed": 11},
             sdk_of({"model": M, "prompt": "the the the the", "max_tokens": 24, "presence_penalty": 1.5, "seed": 11})),
        Case("response_format json_object", CHAT, chat | {"response_format": {"type": "json_object"}, "max_tokens": 16},
             sdk_of(chat | {"response_format": {"type": "json_object"}, "max_tokens": 16})),
        Case("a seed, no temperature or top_p", COMPLETIONS,
             {"model": M, "prompt": "Each engine", "max_tokens": 16, "seed": 42},
             sdk_of({"model": M, "prompt": "Each engine", "max_tokens": 16, "seed": 42})),
        Case("seed 0", CHAT, {"model": M, "messages": MESSAGES, "max_tokens": 16, "seed": 0},
             sdk_of({"model": M, "messages": MESSAGES, "max_tokens": 16, "seed": 0})),
        Case("chat without max_tokens", CHAT, {"model": M, "messages": UNBOUNDED, "temperature": 0},
             sdk_of({"model": M, "messages": UNBOUNDED, "temperature": 0})),
        Case("top_k and min_p (engine-specific)", COMPLETIONS,
             {"model": M, "prompt": "When an engine", "max_tokens": 16, "seed": 5, "top_k": 5, "min_p": 0.1},
             sdk_of({"model": M, "prompt": "When an engine", "max_tokens": 16, "seed": 5}, {"top_k": 5, "min_p": 0.1})),
        Case("a prompt longer than the context", COMPLETIONS, completion | {"prompt": LONG_PROMPT, "max_tokens": 8},
             sdk_of(completion | {"prompt": LONG_PROMPT, "max_tokens": 8}), status=400),
        Case("a prompt longer than the context, streamed", COMPLETIONS,
             completion | {"prompt": LONG_PROMPT, "max_tokens": 8, "stream": True}),
        Case("rejected by the engine (top_p 2)", COMPLETIONS, completion | {"top_p": 2},
             sdk_of(completion | {"top_p": 2}), status=500),
        Case("rejected by the engine (top_p 2), streamed", CHAT, chat | {"top_p": 2, "stream": True},
             sdk_of(chat | {"top_p": 2, "stream": True}), status=500),
        Case("an unknown field", COMPLETIONS, completion | {"x_vendor_field": 1},
             sdk_of(completion, {"x_vendor_field": 1})),
        Case("an unknown field and max_tokens 'abc'", COMPLETIONS,
             completion | {"x_vendor_field": 1, "max_tokens": "abc"}, status=500),
        Case("an engine-specific field the engine validates (top_k 'abc')", COMPLETIONS,
             completion | {"top_k": "abc"}, status=500),
    ]
    return cases


def case_checks(case: Case, r: Raw, dr: Raw, direct: Endpoint) -> None:
    """What some cases check beyond the equality of the answers: `r` through the head, `dr`
    directly from the engine at `direct`."""
    if case.name == "chat":
        usage = dr.json()["usage"]
        check_eq(r.json()["usage"]["prompt_tokens"], usage["prompt_tokens"],
                 "chat: prompt_tokens through the head")
        naive = direct.raw(COMPLETIONS, {"model": M, "prompt": naive_chat_prompt(MESSAGES),
                                         "max_tokens": 1, "temperature": 0})
        check_eq(naive.status, 200, "the naive rendering as a completion")
        naive_tokens = naive.json()["usage"]["prompt_tokens"]
        check(naive_tokens != usage["prompt_tokens"],
              f"chat: the engine applied its own template ({usage['prompt_tokens']} prompt tokens, "
              f"a 'role: content' rendering has {naive_tokens})")
    if case.status != 200:
        err = dr.json().get("error") if dr.content_type.startswith("application/json") else None
        check(isinstance(err, dict) and err.get("code") != "bad-upstream",
              f"{case.name}: the answer is the engine's own error", dr.summary())
    if case.name == "a prompt longer than the context":
        check_eq(r.json()["error"]["code"], "context_length_exceeded", "too long: code")
    if case.name == "a prompt longer than the context, streamed":
        check(r.body == b"" and r.content_type.startswith("text/event-stream"),
              "too long, streamed: an empty event stream, as the engine answers", r.summary())
    if case.name == "chat without max_tokens":
        usage = r.json()["usage"]
        check(r.json()["choices"][0]["finish_reason"] == "length" and
              usage["total_tokens"] == llamaserver.N_CTX and usage["completion_tokens"] > 16,
              "no max_tokens: the engine's default applied (generated until the context was full; "
              "nothing added a max_tokens)", r.summary())
    if "'abc'" in case.name:
        field = "max_tokens" if "max_tokens" in case.name else "top_k"
        check(f"'loc': ('body', '{field}')" in r.json()["error"]["message"],
              f"{case.name}: the engine's message names {field} (the field reached it)", r.summary())
    if case.name == "response_format json_object":
        check(r.json()["choices"][0]["message"]["content"].strip().startswith("{"),
              "json_object: the engine constrained the answer to JSON", r.summary())
