"""GET /metrics: the Prometheus text format, checked with the reference parser
(python3-prometheus-client), carries the per-rank series with the right values after real
traffic, plus refusals and the front-end latency histograms."""

from prometheus_client.parser import text_string_to_metric_families

from harness import Daemon, check, check_eq, get, log, post_json, request, run_test, stream_sse


def main() -> None:
    with Daemon({"data_parallel": {"size": 2}}) as d:
        d.wait_ready()
        for i in range(6):
            status, _ = post_json(d.port, "/v1/completions", {"prompt": f"p{i}", "max_tokens": 3})
            check_eq(status, 200, "completion status")
        stream_sse(d.port, "/v1/completions", {"prompt": "s", "max_tokens": 4, "stream": True})
        post_json(d.port, "/v1/completions", {"prompt": 7})  # a 400, to be counted

        r = request(d.port, "GET", "/metrics", None, None, 10)
        check_eq(r.status, 200, "/metrics status")
        check(r.headers.get("content-type", "").startswith("text/plain"), "text/plain content type", r.headers)
        families = {f.name: f for f in text_string_to_metric_families(r.body.decode())}
        log(f"metric families: {sorted(families)}")

        def samples(name: str) -> dict:
            return {(s.labels.get("rank"), s.labels.get("node")): s.value for s in families[name].samples}

        requests = samples("dpengine_rank_requests")  # the parser drops "_total" from counters
        check_eq(sorted(k[0] for k in requests), ["0", "1"], "one requests series per rank")
        # The 400 is the rank's engine's answer (native backends parse requests in the rank):
        # a request the rank answered, so it counts.
        check_eq(sum(requests.values()), 8.0, "requests answered across ranks (the 400 too)")
        check(all(v > 0 for v in requests.values()), "both ranks served", requests)
        check_eq(sum(samples("dpengine_rank_tokens").values()), 6 * 3 + 4.0, "tokens generated across ranks")
        states = [(s.labels["rank"], s.labels["state"]) for s in families["dpengine_rank_state"].samples]
        check_eq(sorted(states), [("0", "ready"), ("1", "ready")], "rank states")
        check_eq(sum(samples("dpengine_rank_restarts").values()), 0.0, "no restarts")
        check("dpengine_rank_queue_depth" in families and "dpengine_rank_in_flight" in families, "load gauges present")
        check("dpengine_handshake_refusals" in families, "refusals family present")
        codes = {s.labels["code"]: s.value for s in families["dpengine_http_responses"].samples}
        check_eq(codes.get("200"), 7.0, "200 responses counted")
        check_eq(codes.get("400"), 1.0, "400 responses counted")
        hist = families["dpengine_request_duration_seconds"]
        counts = {(s.labels["endpoint"], s.labels["stream"]): s.value for s in hist.samples if s.name.endswith("_count")}
        check_eq(counts, {("completions", "false"): 7.0, ("completions", "true"): 1.0}, "latency histogram counts")
        check("dpengine_time_to_first_token_seconds" in families, "first-token histogram present")
        check_eq(get(d.port, "/health")[0], 200, "still serving")


if __name__ == "__main__":
    run_test(main, timeout=60)
