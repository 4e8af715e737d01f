"""The load generator behind `notagen-trt loadtest`: C concurrent clients send a fixed count of
piece requests (seeds seed, seed+1, ...) to a running service and time them; ``check`` makes the
same pieces on a local engine and compares them with the responses."""

from __future__ import annotations

import asyncio
import collections
import json
import time
from dataclasses import dataclass

import numpy as np

from notagen_trt.runtime.piece import GenerationConfig


@dataclass
class Outcome:
    index: int
    status: int = 0  # HTTP status; 0 when no response came
    seconds: float = 0.0  # request sent to whole response read
    first_bar: float | None = None  # request sent to first bar event (streaming)
    result: dict | None = None  # the PieceOut body
    error: str = ""


def request_bodies(count: int, seed: int = 0, **fields) -> list[dict]:
    """``count`` request bodies, seed, seed+1, ...; ``fields`` left as None are left out."""
    given = {k: v for k, v in fields.items() if v is not None}
    return [{**given, "seed": seed + k} for k in range(count)]


def _error_of(response_text: str, status: int) -> str:
    try:
        return json.loads(response_text)["error"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}: {response_text[:80]}"


async def _plain(client, url: str, body: dict, out: Outcome) -> None:
    response = await client.post(f"{url}/v1/pieces", json=body)
    out.status = response.status_code
    if response.status_code == 200:
        out.result = response.json()
    else:
        out.error = _error_of(response.text, response.status_code)


async def _stream(client, url: str, body: dict, out: Outcome, start: float) -> None:
    async with client.stream("POST", f"{url}/v1/pieces/stream", json=body) as response:
        out.status = response.status_code
        if response.status_code != 200:
            out.error = _error_of((await response.aread()).decode(errors="replace"), response.status_code)
            return
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                if event == "bar" and out.first_bar is None:
                    out.first_bar = time.perf_counter() - start
                elif event == "done":
                    out.result = json.loads(line[5:])
                elif event == "error":
                    out.error = json.loads(line[5:])["error"]
    if out.result is None and not out.error:
        out.error = "the stream ended without a done event"


async def run_load(url: str, bodies: list[dict], clients: int, stream: bool = False,
                   api_key: str | None = None) -> tuple[list[Outcome], float]:
    """Every body sent once by ``clients`` concurrent clients; (outcomes in body order, wall seconds)."""
    import httpx

    url = url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    pending: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(bodies)):
        pending.put_nowait(i)
    outcomes = [Outcome(i) for i in range(len(bodies))]

    async def client_loop(client) -> None:
        while not pending.empty():
            i = pending.get_nowait()
            out, start = outcomes[i], time.perf_counter()
            try:
                if stream:
                    await _stream(client, url, bodies[i], out, start)
                else:
                    await _plain(client, url, bodies[i], out)
            except httpx.HTTPError as exc:
                out.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            out.seconds = time.perf_counter() - start

    timeout = httpx.Timeout(30.0, read=None)  # a piece may take minutes; connecting may not
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    start = time.perf_counter()
    async with httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    return outcomes, time.perf_counter() - start


def _percentiles(values: list[float]) -> dict | None:
    if not values:
        return None
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50": round(float(p50), 3), "p99": round(float(p99), 3)}


def summarize(outcomes: list[Outcome], wall: float) -> dict:
    ok = [o for o in outcomes if o.result is not None and not o.error]
    failed = [o for o in outcomes if o not in ok]
    return {
        "requests": len(outcomes), "ok": len(ok), "errors": len(failed), "seconds": round(wall, 3),
        "pieces_per_minute": round(60 * len(ok) / wall, 3) if wall > 0 else 0.0,
        "patches": sum(o.result["patches"] for o in ok),
        "end_to_end_seconds": _percentiles([o.seconds for o in ok]),
        "first_bar_seconds": _percentiles([o.first_bar for o in ok if o.first_bar is not None]),
        "first_errors": [f"request {o.index}: {o.error}" for o in failed[:3]],
        # 503 (busy: the queue was full) against real failures; 0: no response at all
        "errors_by_status": dict(sorted(collections.Counter(o.status for o in failed).items())),
    }


def config_of(body: dict) -> GenerationConfig:
    """The GenerationConfig the service makes of a request body (the service's own reading)."""
    from .schemas import PieceIn, generation_config

    return generation_config(PieceIn.model_validate(body), body["seed"])


def check(outcomes: list[Outcome], bodies: list[dict], model: str | None = None, backend: str = "auto",
          precision: str | None = None, rows: int | None = None) -> tuple[str, list[str]]:
    """Make every answered request's piece on a local engine, as `generate` writes it; (the local
    backend, one line per response whose ABC differs)."""
    from notagen_trt.runtime.engine import PieceRequest, load_engine
    from notagen_trt.runtime.prompts import resolve_prompt
    from notagen_trt.runtime.render import piece_abc

    answered = [o for o in outcomes if o.result is not None and o.result["outputs"].get("abc") is not None]
    prompts = [resolve_prompt(bodies[o.index].get("period"), bodies[o.index].get("composer"),
                              bodies[o.index].get("instrumentation")) for o in answered]
    configs = [config_of({**bodies[o.index], "seed": o.result["seed"]}) for o in answered]
    with load_engine(model, backend, precision, rows) as engine:
        pieces = engine.generate(PieceRequest(p, c) for p, c in zip(prompts, configs))
        name, made_by = engine.executor.name, engine.made_by
    differ = []
    for o, prompt, config, piece in zip(answered, prompts, configs, pieces):
        if o.result["outputs"]["abc"] != piece_abc(prompt, config, piece, made_by):
            capped = (o.result["stop_reason"] == "max_patches" and config.max_patches is None
                      and o.result["patches"] < piece.patches)
            differ.append(f"request {o.index} (seed {config.seed}): the service's ABC ({o.result['backend']}, "
                          f"{o.result['patches']} patches) differs from the local piece ({name}, {piece.patches} patches)"
                          + (f"; the service capped it (serve --max-patches): check with --max-patches "
                             f"{o.result['patches']}" if capped else ""))
    return name, differ
