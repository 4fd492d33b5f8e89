"""Which counters the agent reads as a serving replica's load (issue 14): SGLang's and vLLM's by
default, the job's ``autoscale.counters`` when it names its own, scraped from a real HTTP
``/metrics`` page (stdlib server on an ephemeral port)."""

from __future__ import annotations

import http.server
import threading

import pytest

from xpod.runtime.agent.agent import scrape_counters
from xpod.scheduler.contract import LOAD_COUNTERS, load_counters

PAGE = b"""# TYPE myserver:tokens_total counter
myserver:tokens_total 1200
# TYPE myserver:cached_tokens_total counter
myserver:cached_tokens_total 300
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total 40
"""


@pytest.fixture
def metrics_url():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(PAGE)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()
    server.server_close()


def spec(**autoscale):
    return {"autoscale": {"metric": "tokens_per_s", "target_per_replica": 100, **autoscale}}


def test_default_counters_are_sglangs_and_vllms(metrics_url):
    assert load_counters("ServingJob", spec()) == LOAD_COUNTERS["tokens_per_s"]
    assert scrape_counters(metrics_url, load_counters("ServingJob", spec())) == 40.0  # only SGLang's is there


def test_the_jobs_own_counters_are_summed(metrics_url):
    names = load_counters("ServingJob", spec(counters=["myserver:tokens_total", "myserver:cached_tokens_total"]))
    assert names == ("myserver:tokens_total", "myserver:cached_tokens_total")
    assert scrape_counters(metrics_url, names) == 1500.0
    assert scrape_counters(metrics_url, ("absent_total",)) is None  # nothing to say yet


def test_no_counters_without_autoscale():
    assert load_counters("ServingJob", {}) == ()
    assert load_counters("TrainingJob", spec()) == ()
