"""The front door (issue 14, item 8): API keys and TLS on the head's HTTP API, driven the way
users drive it: the official OpenAI Python SDK with `api_key` and an https `base_url` that
trusts a test CA, plain HTTPS requests, dpctl to make the keys, SIGHUP to reload.

A DP=3 head (min_ranks 1) that runs ranks 0 and 1 and waits on TCP for a node with rank 2
(security.insecure), whose rank 1 is killed and stays failed (restart_budget 0), so /health
has ranks and a node to name as missing, with frontend.api_keys, tls_certificate and tls_key
set:
  - dpctl keys api-key makes a key and its line; dpctl keys hash-api-key prints the same line
    for the key on stdin, which is "sha256:" + the key's SHA-256;
  - through the SDK (https, the test CA): completions, chat and a stream work unchanged with
    the key; a wrong key raises openai.AuthenticationError (401);
  - raw HTTPS: no key and a wrong key get 401 with the OpenAI error object (type
    invalid_request_error, code invalid_api_key) and WWW-Authenticate: Bearer, on /v1/models,
    /v1/completions and /metrics; /metrics with the key works; /health answers everyone but
    names the missing rank only with the key; plain HTTP on the port gets no answer;
  - reload: a new key file (key 2 only) and a new certificate, then SIGHUP: key 1 gets 401,
    key 2 works through the SDK, and new connections see the new certificate;
  - a key file readable by others: the reload is refused with an error naming the file and
    the chmod that fixes it, and key 2 keeps working; so is a certificate with another's key; dpengined --check-config refuses the
    same file the same way, and a file holding a plain key instead of a hash names the line.
"""

import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile

import llamaserver

llamaserver.require_venv()  # the openai SDK lives in build-venv; re-executes there

import openai  # noqa: E402

import harness  # noqa: E402
from harness import (HOST, Daemon, check, check_eq, check_in, free_port, log, run_dpengined, run_test,  # noqa: E402
                     synthetic_completion, wait_until, write_config)


def openssl(*args: str, cwd: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: str) -> str:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key",
            "-out", "ca.pem", "-days", "2", "-subj", "/CN=dpengine test CA", cwd=directory)
    return os.path.join(directory, "ca.pem")


def make_server_cert(directory: str, name: str) -> tuple[str, str]:
    """A certificate for 127.0.0.1 signed by the test CA: (certificate path, key path), the key mode 0600."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)
    with open(os.path.join(directory, "san.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
            f"{name}.pem", "-days", "2", "-extfile", "san.cnf", cwd=directory)
    os.chmod(os.path.join(directory, f"{name}.key"), 0o600)
    return os.path.join(directory, f"{name}.pem"), os.path.join(directory, f"{name}.key")


def dpctl(*args: str, stdin: str | None = None) -> str:
    r = subprocess.run([os.path.join(harness.build_dir(), "ctl", "dpctl"), *args], input=stdin, capture_output=True,
                       text=True, timeout=30)
    check_eq(r.returncode, 0, f"dpctl {' '.join(args)} exit status ({r.stderr.strip()})")
    return r.stdout


def new_key(label: str) -> tuple[str, str]:
    """(key, its key file line), from dpctl keys api-key."""
    lines = dpctl("keys", "api-key", label).splitlines()
    key, line = lines[1], lines[3]
    check(key.startswith("dpe-") and len(key) == 47, "dpctl keys api-key prints a key", key)
    check_eq(line, f"sha256:{hashlib.sha256(key.encode()).hexdigest()} {label}",
             "its line is sha256: + the key's SHA-256 + the label")
    check_eq(dpctl("keys", "hash-api-key", label, stdin=key + "\n").strip(), line,
             "dpctl keys hash-api-key prints the same line for the key on stdin")
    return key, line


def write_keys(path: str, lines: list[str], mode: int = 0o600) -> None:
    with open(path, "w") as f:
        f.write("# the front-end's API keys\n\n" + "\n".join(lines) + "\n")
    os.chmod(path, mode)


class Https:
    """Raw HTTPS to the head, trusting the test CA."""

    def __init__(self, port: int, ca: str):
        self.port = port
        self.context = ssl.create_default_context(cafile=ca)

    def request(self, method: str, path: str, key: str | None = None, body: dict | None = None):
        conn = http.client.HTTPSConnection(HOST, self.port, timeout=30, context=self.context)
        try:
            headers = {"Content-Type": "application/json"}
            if key is not None:
                headers["Authorization"] = f"Bearer {key}"
            conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def peer_certificate(self) -> bytes:
        with socket.create_connection((HOST, self.port), timeout=10) as raw:
            with self.context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                return s.getpeercert(binary_form=True)


def sdk(port: int, ca: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"https://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=30,
                         http_client=openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=ca)))


def check_sdk_works(client: openai.OpenAI, what: str) -> None:
    c = client.completions.create(model="synthetic", prompt="hello keys", max_tokens=5, seed=7)
    check_eq(c.choices[0].text, synthetic_completion("hello keys", 7, 5).text, f"{what}: SDK completion")
    chat = client.chat.completions.create(model="synthetic", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=4, seed=1)
    check(chat.choices[0].message.content, f"{what}: SDK chat completion", chat)
    text = "".join(chunk.choices[0].text for chunk in
                   client.completions.create(model="synthetic", prompt="stream", max_tokens=6, seed=2, stream=True)
                   if chunk.choices)
    check_eq(text, synthetic_completion("stream", 2, 6).text, f"{what}: SDK stream")
    check_eq([m.id for m in client.models.list()], ["synthetic"], f"{what}: SDK models list")


def check_sdk_refused(client: openai.OpenAI, what: str) -> None:
    try:
        client.completions.create(model="synthetic", prompt="x", max_tokens=2)
    except openai.AuthenticationError as e:
        check_eq(e.status_code, 401, f"{what}: openai.AuthenticationError")
        return
    check(False, f"{what}: openai.AuthenticationError raised")


def check_401(https: Https, method: str, path: str, key: str | None, what: str) -> None:
    status, headers, body = https.request(method, path, key, {"prompt": "x"} if method == "POST" else None)
    err = json.loads(body).get("error", {}) if body.startswith(b"{") else {}
    check(status == 401 and err.get("type") == "invalid_request_error" and err.get("code") == "invalid_api_key"
          and isinstance(err.get("message"), str) and headers.get("www-authenticate", "").startswith("Bearer"),
          f"{what}: 401 with the OpenAI error object and WWW-Authenticate: Bearer", (status, headers, body[:300]))


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="dpe-frontdoor-")
    try:
        front_door(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def front_door(tmp: str) -> None:
    ca = make_ca(tmp)
    cert, cert_key = make_server_cert(tmp, "server1")
    key1, line1 = new_key("alice")
    key2, line2 = new_key("bob")
    keys_file = os.path.join(tmp, "api_keys")
    write_keys(keys_file, [line1])

    # Rank 2 belongs to another node that never comes: the head listens on TCP, which makes
    # the reloads below those of a multi-node head (its rpc_port is in use, by itself).
    config = {"data_parallel": {"size": 3, "size_local": 2, "min_ranks": 1, "rpc_port": free_port()},
              "security": {"insecure": True}, "handshake": {"ready_timeout": 3.0},
              "supervision": {"restart_budget": 0},
              "frontend": {"api_keys": keys_file, "tls_certificate": cert, "tls_key": cert_key}}
    with Daemon(config, name="front-door") as d:
        d.wait_ready(30)  # with ranks 0 and 1, after handshake.ready_timeout
        https = Https(d.port, ca)
        # Rank 1 killed stays failed (no restart budget): /health has a rank and node to name.
        os.kill(d.ranks()[1], signal.SIGKILL)
        check(wait_until(lambda: any(m.startswith("rank 1 ") for m in
                                     json.loads(https.request("GET", "/health", key1)[2]).get("missing", [])), 20),
              "rank 1 is missing")

        log("the SDK over HTTPS with the key:")
        check_sdk_works(sdk(d.port, ca, key1), "key 1")
        check_sdk_refused(sdk(d.port, ca, key2), "a key not in the file")
        check_sdk_refused(sdk(d.port, ca, "dpe-wrong"), "a wrong key")

        log("raw HTTPS:")
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/completions"), ("GET", "/metrics")):
            check_401(https, method, path, None, f"{method} {path} without a key")
            check_401(https, method, path, key2, f"{method} {path} with a wrong key")
        status, _, body = https.request("GET", "/metrics", key1)
        check(status == 200 and b"dpengine_rank_state" in body, "/metrics with the key", (status, body[:200]))
        status, _, body = https.request("GET", "/health")
        health = json.loads(body)
        node = socket.gethostname()
        check(status == 200 and health.get("ready_ranks") == 1 and health.get("ranks") == 3 and "missing" not in health and node.encode() not in body,
              "/health without a key: the counts, no missing ranks or node names", (status, body))
        status, _, body = https.request("GET", "/health", key1)
        missing = json.dumps(json.loads(body).get("missing"))
        check(status == 200 and "rank 1" in missing and node in missing,
              "/health with the key names the missing rank and its node", (status, body))
        plain = harness.raw_exchange(d.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
        check(not plain.startswith(b"HTTP/"), "plain HTTP on the HTTPS port gets no HTTP answer", plain[:100])

        log("reload: key 2 replaces key 1, a new certificate:")
        first_cert = https.peer_certificate()
        new_cert, new_cert_key = make_server_cert(tmp, "server2")
        write_keys(keys_file, [line2])
        write_config(d.tmp, harness.merge(d.config, {"frontend": {"tls_certificate": new_cert, "tls_key": new_cert_key}}))
        reloads = d.log_text().count("configuration reloaded")
        os.kill(d.pid, signal.SIGHUP)
        check(wait_until(lambda: d.log_text().count("configuration reloaded") > reloads, 10), "the reload is done")
        check_sdk_refused(sdk(d.port, ca, key1), "key 1 after it was removed")
        check_sdk_works(sdk(d.port, ca, key2), "key 2 after the reload")
        check(https.peer_certificate() != first_cert, "new connections get the new certificate")

        log("a key file others can read:")
        os.chmod(keys_file, 0o644)
        refusals = d.log_text().count("reload refused")
        os.kill(d.pid, signal.SIGHUP)
        check(wait_until(lambda: d.log_text().count("reload refused") > refusals, 10), "the reload is refused")
        refusal = [l for l in d.log_text().splitlines() if "reload refused" in l][-1]
        check(keys_file in refusal and f"chmod 600 {keys_file}" in refusal,
              "the refusal names the file and the chmod that fixes it", refusal)
        check_sdk_works(sdk(d.port, ca, key2), "key 2 after the refused reload")

        log("a certificate with another certificate's key:")
        os.chmod(keys_file, 0o600)
        write_config(d.tmp, harness.merge(d.config, {"frontend": {"tls_certificate": new_cert, "tls_key": cert_key}}))
        refusals = d.log_text().count("reload refused")
        os.kill(d.pid, signal.SIGHUP)
        check(wait_until(lambda: d.log_text().count("reload refused") > refusals, 10), "the reload is refused")
        refusal = [l for l in d.log_text().splitlines() if "reload refused" in l][-1]
        check(f"{cert_key} is not the private key of frontend.tls_certificate {new_cert}" in refusal,
              "the refusal names the key and the certificate it does not belong to", refusal)
        check_sdk_works(sdk(d.port, ca, key2), "HTTPS after the refused reload")
        check(d.running(), "the daemon runs")
        check_eq(d.stop(), 0, "exit status 0 after SIGTERM")

        # (after the stop: --check-config would find the rpc_port in use)
        os.chmod(keys_file, 0o644)
        r = run_dpengined(["--config", d.config_path, "--check-config"])
        check(r.returncode != 0 and keys_file in r.stderr and f"chmod 600 {keys_file}" in r.stderr,
              "--check-config refuses the exposed key file, naming it and the fix", r.output)
        write_keys(keys_file, [line2, key1])
        r = run_dpengined(["--config", d.config_path, "--check-config"])
        check_in(f"{keys_file}:4:", r.stderr, "a plain key instead of a hash: the error names the line")
        check_in("hash-api-key", r.stderr, "... and how to make its hash")
        check(r.returncode != 0, "... and the configuration is refused")


if __name__ == "__main__":
    run_test(main, timeout=240)
