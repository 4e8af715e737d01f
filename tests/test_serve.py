"""The HTTP service, started for real on a loopback port over the demo model on ONNX Runtime's CPU
backend: the pieces `generate` writes, concurrent clients, cancellation, the API key, a full
queue, bad requests, the OpenAPI schema under schemathesis, and two Ray Serve replicas."""

import asyncio
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import BACH, LoopbackServer
from hypothesis import HealthCheck, settings

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from notagen_trt.cli import main  # noqa: E402
from notagen_trt.serve.app import create_app  # noqa: E402
from notagen_trt.errors import NotaGenError  # noqa: E402
from notagen_trt.serve.settings import CPU_ROWS, ServeSettings, load_pool  # noqa: E402

pytestmark = pytest.mark.serve
PROMPT = dict(zip(("period", "composer", "instrumentation"), BACH))
KEY = "s3cret-key"
# A piece of the demo model that runs past 1,000 patches: it holds its row while a test looks.
LONG = {"period": "Romantic", "composer": "Chopin, Frederic", "instrumentation": "Keyboard", "seed": 1, "bars": 200}


class Server(LoopbackServer):
    """The service on a thread, on a free 127.0.0.1 port."""

    def __init__(self, settings: ServeSettings) -> None:
        self.pool = load_pool(settings)
        super().__init__(create_app(self.pool, api_key=settings.api_key, max_body=settings.max_body,
                                    max_patches=settings.max_patches))

    def metric(self, name: str, **labels) -> float:
        text = httpx.get(f"{self.url}/metrics", headers=_auth()).text
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.split(" ")[0] == want)

    def stop(self) -> None:
        self.stop_server()
        self.pool.close()


def _auth() -> dict:
    return {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server():
    s = Server(ServeSettings(backend="ort-cpu", rows=8, threads=1))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def guarded():
    """One row, a queue of one, an API key."""
    s = Server(ServeSettings(backend="ort-cpu", rows=1, threads=1, max_queue=1, api_key=KEY))
    yield s
    s.stop()


def _stream_events(response) -> list[tuple[str, dict]]:
    events, kind = [], ""
    for line in response.iter_lines():
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            events.append((kind, json.loads(line[5:])))
    return events


def test_same_piece_as_generate_plain_and_streaming(server, tmp_path):
    assert main(["generate", "--backend", "ort-cpu", "--seed", "3", "--out", str(tmp_path), "--json",
                 *(f"--{k}={v}" for k, v in PROMPT.items())]) == 0
    written = next(tmp_path.glob("*.abc")).read_text()
    plain = httpx.post(f"{server.url}/v1/pieces", json={**PROMPT, "seed": 3, "outputs": ["abc", "midi"]}, timeout=120)
    assert plain.status_code == 200, plain.text
    body = plain.json()
    assert body["outputs"]["abc"] == written and body["seed"] == 3 and body["complete"]
    assert body["outputs"]["midi"] and set(body["outputs"]) == {"abc", "midi"}  # as asked (null: a failed one)
    with httpx.stream("POST", f"{server.url}/v1/pieces/stream", json={**PROMPT, "seed": 3}, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _stream_events(r)
    bars = [data for kind, data in events if kind == "bar"]
    assert [b["index"] for b in bars] == list(range(len(bars))) and len(bars) > 10
    assert events[-1][0] == "done" and events[-1][1]["outputs"]["abc"] == written
    body_lines = [line for line in "".join(b["text"] for b in bars).splitlines() if line.startswith("[r:")]
    assert len(body_lines) == sum(line.startswith("[V:") for line in written.splitlines())


def test_eight_concurrent_clients_all_answered_once(server, capsys):
    """Through `loadtest --check`: every response is the piece the local engine makes for its seed."""
    assert main(["loadtest", "--url", server.url, "--clients", "8", "--requests", "8", "--seed", "100",
                 "--max-patches", "24", "--stream", "--check", "--backend", "ort-cpu", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] == 8 and summary["errors"] == 0 and summary["check"]["differ"] == 0
    assert summary["first_bar_seconds"]["p50"] <= summary["end_to_end_seconds"]["p50"]
    from notagen_trt.serve.loadgen import request_bodies, run_load

    outcomes, _ = asyncio.run(run_load(server.url, request_bodies(8, 200, max_patches=8), clients=8))
    assert sorted(o.result["seed"] for o in outcomes) == list(range(200, 208))
    assert [o.result["seed"] for o in outcomes] == [200 + o.index for o in outcomes]


@pytest.mark.parametrize("path, flags, words", [("", ["--period", "Romantic"], "give all three of --period"),
                                                ("", ["--max-patches", "0"], "--max-patches must be positive"),
                                                ("/v1", [], "not a notagen-trt service (GET /healthz answered HTTP 404)")])
def test_loadtest_refuses_what_every_request_would_fail_in_one_line(server, capsys, path, flags, words):
    """A request every piece would be refused for, or an address that is not the service's (a
    path added): one line and exit status 2 before any load, not one error per request."""
    assert main(["loadtest", "--url", server.url + path, "--requests", "4", *flags]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1, err


def _wait_for(check, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_client_that_leaves_frees_its_row(server, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="uvicorn.error")
    before = server.metric("notagen_requests_total", endpoint="/v1/pieces/stream", outcome="cancelled")
    with httpx.stream("POST", f"{server.url}/v1/pieces/stream", json=LONG, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("event: bar"):
                break  # leave after the first bar: closing the stream closes the connection
    _wait_for(lambda: server.metric("notagen_requests_total", endpoint="/v1/pieces/stream", outcome="cancelled")
              == before + 1)
    _wait_for(lambda: server.metric("notagen_active_rows", engine="0") == 0)
    assert server.pool.engines[0].active == 0 and server.pool.waiting() == 0
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("piece /v1/pieces/stream"))
    assert "cancelled (the client left)" in line and " 0.00 s, " not in line  # the time it ran, not 0


@pytest.mark.parametrize("body, status, words", [
    ({**PROMPT, "composer": "Bahc"}, 422, "unknown composer"),
    ({**PROMPT, "composer": "Nobody At All"}, 422, "(GET /v1/prompts lists them all)"),
    ({"period": "Baroque"}, 422, "all three"),
    ({"seed": -1}, 422, "seed"),
    ({"bars": -1}, 422, "bars"),
    ({"max_patches": 10**12}, 422, "max_patches"),
    ({"top_p": 0}, 422, "top_p"),
    ({"outputs": ["pdf"]}, 422, "outputs"),
    ({"colour": "blue"}, 422, "colour"),
    ({"seed": True}, 422, "seed"),  # whole numbers are strict: not read as 1
    ({"seed": "5"}, 422, "seed"),
    ({"top_k": 9.0}, 422, "top_k"),
    ('{"seed": 1', 400, "malformed JSON"),
    ("x" * (65 * 1024), 413, "larger than"),
])
def test_bad_requests_get_a_one_line_4xx(server, body, status, words):
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, str) else {"json": body}
    r = httpx.post(f"{server.url}/v1/pieces", timeout=30, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words in error and "\n" not in error
    assert httpx.get(f"{server.url}/healthz").status_code == 200  # still serving


def test_json_sent_as_a_form_is_told_to_say_json(server):
    """curl -d sends application/x-www-form-urlencoded; the answer says which header to send."""
    r = httpx.post(f"{server.url}/v1/pieces", content='{"max_patches": 5}', timeout=30,
                   headers={"content-type": "application/x-www-form-urlencoded"})
    error = r.json()["error"]
    assert r.status_code == 422 and "Content-Type: application/json" in error and "x-www-form-urlencoded" in error


def test_unknown_paths_and_methods(server):
    assert httpx.get(f"{server.url}/v2/nothing").json() == {"error": "no such endpoint: /v2/nothing"}
    assert httpx.delete(f"{server.url}/v1/pieces").status_code == 405
    prompts = httpx.get(f"{server.url}/v1/prompts").json()["prompts"]
    assert len(prompts) == 112 and PROMPT in prompts


def test_api_key_guards_every_endpoint_but_healthz_and_the_docs(guarded):
    assert httpx.get(f"{guarded.url}/healthz").status_code == 200
    # A browser opens the docs page, which reads the schema; the schema says how to send the key.
    assert httpx.get(f"{guarded.url}/docs").status_code == 200
    schema = httpx.get(f"{guarded.url}/openapi.json").json()
    assert schema["components"]["securitySchemes"]["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert {"bearer": []} in schema["security"] and schema["paths"]["/healthz"]["get"]["security"] == []
    for path in ("/readyz", "/metrics", "/v1/prompts"):
        r = httpx.get(f"{guarded.url}{path}")
        assert r.status_code == 401 and "API key" in r.json()["error"] and r.headers["www-authenticate"] == "Bearer"
        assert httpx.get(f"{guarded.url}{path}", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{guarded.url}{path}", headers=_auth()).status_code == 200
        assert httpx.get(f"{guarded.url}{path}", headers={"X-API-Key": KEY}).status_code == 200
    assert httpx.post(f"{guarded.url}/v1/pieces", json={"seed": 1}).status_code == 401
    assert guarded.metric("notagen_requests_total", endpoint="/v1/pieces", outcome="unauthorized") == 1


def test_a_full_queue_answers_503_with_retry_after(guarded):
    """One row and a queue of one: a third piece is refused until the first two are done."""
    with httpx.stream("POST", f"{guarded.url}/v1/pieces/stream", json=LONG, headers=_auth(), timeout=60) as first:
        lines = first.iter_lines()  # kept: a closed line iterator would close the stream
        next(line for line in lines if line.startswith("event: bar"))  # it holds the row
        waiter = threading.Thread(target=httpx.post, args=(f"{guarded.url}/v1/pieces",),
                                  kwargs={"json": {"seed": 1, "max_patches": 3}, "headers": _auth(), "timeout": 60})
        waiter.start()
        _wait_for(lambda: httpx.get(f"{guarded.url}/readyz", headers=_auth()).status_code == 503)
        third = httpx.post(f"{guarded.url}/v1/pieces", json={"seed": 2, "max_patches": 3}, headers=_auth())
        assert third.status_code == 503 and "queue is full" in third.json()["error"]
        assert int(third.headers["retry-after"]) >= 1
    waiter.join(60)  # the first one left: the waiting piece took its row and finished
    assert httpx.get(f"{guarded.url}/readyz", headers=_auth()).json()["waiting"] == 0
    assert guarded.metric("notagen_requests_total", endpoint="/v1/pieces", outcome="busy") == 1
    assert guarded.metric("notagen_requests_total", endpoint="/v1/pieces", outcome="stopped") == 1


# ---- schemathesis: the service's own OpenAPI schema, no 5xx ------------------------------------
schemathesis = pytest.importorskip("schemathesis")


def test_rows_default_to_the_backends_as_for_generate():
    """Without --rows a CPU service takes the CPU backend's rows (4), as generate does, not a GPU's 16."""
    pool = load_pool(ServeSettings(backend="ort-cpu", threads=1))
    try:
        assert [e.executor.rows for e in pool.engines] == [CPU_ROWS] and CPU_ROWS == 4
    finally:
        pool.close()


@pytest.fixture(scope="module")
def capped():
    s = Server(ServeSettings(backend="ort-cpu", rows=4, threads=1, max_patches=4))
    yield s
    s.stop()


def test_loadtest_check_names_the_services_cap(capped, capsys):
    """Pieces a `serve --max-patches 4` capped differ from the uncapped local ones: --check says
    which cap to check with, and with it every piece is equal."""
    argv = ["loadtest", "--url", capped.url, "--requests", "2", "--seed", "7", "--check", "--backend", "ort-cpu", "--json"]
    assert main(argv) == 1
    first = json.loads(capsys.readouterr().out)["check"]["first"][0]
    assert first.endswith("the service capped it (serve --max-patches): check with --max-patches 4")
    assert main([*argv, "--max-patches", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["check"]["differ"] == 0


@pytest.mark.slow
def test_openapi_schema_finds_no_server_error(capped):
    """Every operation of the live schema, 25 valid and 25 invalid generated requests each
    (schemathesis' pytest plugin is driven by hand: its lazy fixture loader fails under pytest 9)."""
    from hypothesis import given
    from schemathesis import GenerationMode
    from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                     status_code_conformance)

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    schema = schemathesis.openapi.from_url(f"{capped.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/pieces", "POST /v1/pieces/stream", "GET /v1/prompts"}
    for operation, mode in itertools.product(operations, (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)):
        if mode is GenerationMode.NEGATIVE and operation.method.upper() != "POST":
            continue  # nothing to get wrong in a GET without parameters
        @given(case=operation.as_strategy(mode))
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case):
            case.call_and_validate(base_url=capped.url, checks=checks, timeout=60)

        fuzz()
    assert httpx.get(f"{capped.url}/readyz").json()["active"] == 0
    for outcome in ("invalid", "stopped"):  # refused requests, and pieces made (4 patches at most here)
        assert capped.metric("notagen_requests_total", endpoint="/v1/pieces", outcome=outcome) > 0


# ---- Ray Serve: two replicas on the CPU ------------------------------------------------------
@pytest.mark.slow
def test_ray_serve_spreads_requests_over_two_replicas(tmp_path):
    pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'notagen-trt[ray]')")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("notagen-trt", path=str(Path(sys.executable).parent)) or "notagen-trt"
    log = open(tmp_path / "ray.log", "w")
    proc = subprocess.Popen([exe, "serve", "--ray", "--replicas", "2", "--min-replicas", "2", "--gpus", "none",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        # Up once the CLI says so: serve.run returns when both replicas run (a /readyz answer alone
        # may come from the first replica while the second still loads its engine).
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (tmp_path / "ray.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "Ray Serve did not come up"
            if "serving on" in (tmp_path / "ray.log").read_text():
                try:
                    if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            time.sleep(2)
        from concurrent.futures import ThreadPoolExecutor

        def one(seed: int) -> httpx.Response:
            return httpx.post(f"{url}/v1/pieces", json={"seed": seed, "max_patches": 10}, timeout=60)

        # The proxy's router learns of a new replica a moment after it runs: rounds of 16
        # concurrent-ish requests (4 at most) until both replicas have answered.
        replicas: set[str] = set()
        for start in range(0, 64, 16):
            with ThreadPoolExecutor(6) as ex:
                responses = list(ex.map(one, range(start, start + 16)))
            assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
            assert sorted(r.json()["seed"] for r in responses) == list(range(start, start + 16))
            replicas |= {r.headers["x-notagen-replica"] for r in responses}
            if len(replicas) == 2:
                break
        assert len(replicas) == 2, replicas
    finally:
        proc.send_signal(signal.SIGINT)  # the CLI shuts Serve and its local Ray down
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_sigterm_lets_pieces_finish_for_the_grace_then_answers_the_rest(tmp_path):
    """`serve --grace 1`, SIGTERM with a long piece running and one waiting: after the grace both
    clients get the service's own answer (a JSON 503, a stream's error event), not a cut connection
    or uvicorn's plain 500; no traceback in the log; the listening line came after the bind."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "notagen_trt.cli", "serve", "--port", str(port), "--rows", "1",
                             "--backend", "ort-cpu", "--grace", "1", "--log-level", "info"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: "serve: http://" in (tmp_path / "serve.log").read_text(), 120)
        answers = {}

        def plain():
            answers["plain"] = httpx.post(f"{url}/v1/pieces", json={**LONG, "outputs": ["abc"]}, timeout=60)

        def stream():
            with httpx.stream("POST", f"{url}/v1/pieces/stream", json=LONG, timeout=60) as r:
                answers["stream"] = _stream_events(r)

        threads = [threading.Thread(target=plain), threading.Thread(target=stream)]
        for t in threads:
            t.start()
        _wait_for(lambda: 'notagen_queue_depth{engine="0"} 1.0' in httpx.get(f"{url}/metrics").text, 30)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        assert proc.wait(30) in (0, 143)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert answers["plain"].status_code == 503 and "shutting down" in answers["plain"].json()["error"], text
    assert answers["stream"][-1] == ("error", {"error": "the service is shutting down; the piece was cancelled"})
    assert "Traceback" not in text and "get 1 s to finish" in text
    assert "piece /v1/pieces seed 1: cancelled (the service is shutting down), " in text  # a line per piece
    assert "GET /metrics" not in text  # probes and scrapes that succeed stay out of the access log
    assert text.index("Uvicorn running on") < text.index("serve: http://")


@pytest.mark.parametrize("values", [{"threads": 0}, {"threads": "-1"}, {"rows": "0"}, {"max_queue": 0}])
def test_settings_below_one_are_refused(values):
    """Counts below one are refused in one line before any model loads (ONNX Runtime would take
    0 threads as every core, spinning)."""
    name = next(iter(values))
    with pytest.raises(NotaGenError, match=f"^{name.replace('_', '-')} must be at least 1"):
        ServeSettings.from_dict(values)


@pytest.mark.parametrize("command", ["serve", "ui"])
def test_cli_counts_below_one_name_their_flag(command, capsys):
    """On the command line the same counts are usage errors naming the flag, while parsing."""
    for flag in ("--rows", "--threads", "--max-queue", "--max-patches"):
        with pytest.raises(SystemExit) as exc:
            main([command, flag, "0"])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and f"argument {flag}: must be" in err and "got 0" in err, err


@pytest.mark.parametrize("field,ok,bad", [("top_k", 128, 129), ("temperature", 0.01, 0.001), ("temperature", 10, 10.5)])
def test_http_and_cli_accept_the_same_sampling_settings(field, ok, bad):
    """A setting the HTTP body takes, the engine takes (and `generate`, through SamplingParams),
    and one it refuses, both refuse: the same settings give the same piece by any way in."""
    import pydantic

    from notagen_trt.runtime.sampling import SamplingParams
    from notagen_trt.serve.schemas import PieceIn

    assert getattr(PieceIn(**{field: ok}), field) == getattr(SamplingParams(**{field: ok}), field) == ok
    with pytest.raises(pydantic.ValidationError):
        PieceIn(**{field: bad})
    with pytest.raises(ValueError, match=f"^{field} must be"):
        SamplingParams(**{field: bad})


def test_gpus_name_what_is_there():
    """--gpus: numbers of GPUs that are not there are refused saying which are (or how to serve
    on the CPU where there are none)."""
    from notagen_trt.serve.settings import engine_devices

    assert engine_devices("none", lambda: 0) == ["cpu"]
    assert engine_devices("all", lambda: 2) == ["cuda:0", "cuda:1"]
    assert engine_devices("1", lambda: 2) == ["cuda:1"]
    with pytest.raises(NotaGenError, match=r"no GPU 0 here \(0 visible; --gpus none serves on the CPU\)"):
        engine_devices("0", lambda: 0)
    with pytest.raises(NotaGenError, match=r"no GPU 2 here \(2 visible: 0 to 1\)"):
        engine_devices("0,2", lambda: 2)


def test_a_body_that_never_arrives_is_408_not_a_held_connection():
    """A client that declares 20 bytes and sends 4 held its connection open indefinitely: the guard
    waits its body time (30 s plus 16 KB/s of --max-body) and answers 408."""
    from notagen_trt.serve.guard import Guard

    async def app(scope, receive, send):  # never reached
        raise AssertionError("the app ran")

    sent, outcomes = [], []
    guard = Guard(app, api_key=None, max_body=1024, replica="test", rejected=lambda path, o: outcomes.append(o))
    assert 30 < guard.body_seconds < 31
    guard.body_seconds = 0.2
    parts = iter([{"type": "http.request", "body": b"{\"se", "more_body": True}])

    async def receive():
        part = next(parts, None)
        if part is None:
            await asyncio.sleep(3600)
        return part

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/pieces", "headers": [(b"content-length", b"20")]}
    asyncio.run(asyncio.wait_for(guard(scope, receive, send), 5))
    assert sent[0]["status"] == 408 and b"did not arrive within 0 s" in sent[1]["body"] and outcomes == ["invalid"]


def test_loadtest_counts_its_errors_by_status():
    """A busy service's 503s are told apart from failures (and from no answer at all)."""
    from notagen_trt.serve.loadgen import Outcome, summarize

    outcomes = [Outcome(0, status=200, result={"patches": 3}, seconds=1.0), Outcome(1, status=503, error="busy"),
                Outcome(2, status=503, error="busy"), Outcome(3, status=0, error="refused"),
                Outcome(4, status=500, error="failed")]
    summary = summarize(outcomes, 2.0)
    assert summary["errors"] == 4 and summary["errors_by_status"] == {0: 1, 500: 1, 503: 2}
