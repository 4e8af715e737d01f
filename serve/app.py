"""The HTTP API over an engine pool (``create_app``). Every request shares the engines' running
batches: a new piece joins at the next patch. Every refusal is a 4xx (or 503) JSON body
``{"error": "<one line>"}``, and nothing a client sends stops the service."""

# No `from __future__ import annotations`: FastAPI reads the body type of the routes from a local
# (the request model, capped per server) when the function is defined.
import asyncio
import base64
import binascii
import math
import os
import secrets
import socket
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from notagen_trt import __version__
from notagen_trt.errors import NotaGenError
from notagen_trt.runtime.continuation import Continuation, parse_continuation
from notagen_trt.runtime.prompts import Prompt, resolve_prompt, valid_prompts

from .guard import Guard
from .jobs import ApiError, Job
from .metrics import ServiceMetrics
from .pool import EnginePool, QueueFull
from .schemas import BarOut, ErrorOut, Health, PieceIn, PieceOut, PromptsOut, Ready, generation_config, piece_request_model
from .settings import DEFAULT_MAX_BODY

ERRORS = {status: {"model": ErrorOut, "description": why} for status, why in (
    (400, "Malformed JSON"), (401, "Missing or wrong API key"), (413, "Body too large"),
    (422, "A value out of bounds, or an unknown prompt"), (503, "The queue is full (see Retry-After)"))}
STREAM_DOC = {"description": f"Server-sent events: `bar` ({', '.join(BarOut.model_fields)}) for each closed bar, "
                             "then `done` with the PieceOut body (or `error` with an ErrorOut body)",
              "content": {"text/event-stream": {"schema": {  # one event (OpenAPI before 3.2 describes each)
                  "type": "object", "required": ["event", "data"],
                  "properties": {"event": {"type": "string", "enum": ["bar", "done", "error"]},
                                 "data": {"type": "string", "contentMediaType": "application/json"}}}}}}


def create_app(pool: EnginePool, *, api_key: str | None = None, max_body: int = DEFAULT_MAX_BODY,
               max_patches: int | None = None, replica: str | None = None) -> FastAPI:
    """The service's ASGI app; ``max_patches`` caps every piece; shutting the app down closes the pool."""
    metrics = ServiceMetrics(pool)
    request_model = piece_request_model(max_patches)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        pool.close()  # queued and running pieces end as cancelled

    app = FastAPI(title="notagen-trt", version=__version__, lifespan=lifespan,
                  description="NotaGen symbolic music (ABC notation) from a prompt and a seed, in-flight batched.")
    app.add_middleware(Guard, api_key=api_key, max_body=max_body, rejected=metrics.outcome,
                       replica=replica or f"{socket.gethostname()}:{os.getpid()}")
    _error_handlers(app, metrics)
    app.state.metrics = metrics  # the page (serve/ui.py) counts its pieces beside the API's

    def start(body: PieceIn, path: str, stream: bool, continuation: Continuation | None = None) -> Job:
        prompt = _prompt(body) or (continuation.prompt if continuation else None)
        if continuation is not None and (body.meter or body.key):
            raise ApiError(422, "meter and key set a new piece's header; a continued piece keeps its file's")
        try:
            config = generation_config(body, secrets.randbelow(2**32) if body.seed is None else body.seed, max_patches)
        except ValueError as exc:
            raise ApiError(422, str(exc)) from None
        formats = list(dict.fromkeys(body.outputs))
        try:
            return Job(pool, metrics, path, prompt, config, formats, stream, continuation)
        except QueueFull as exc:
            retry = max(1, min(600, math.ceil(metrics.mean_piece_seconds * (pool.waiting() + 1) / pool.rows)))
            raise ApiError(503, f"{exc}; retry later", "busy", {"Retry-After": str(retry)}) from None

    @app.get("/healthz", response_model=Health, tags=["health"], summary="The process is up")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", response_model=Ready, tags=["health"], summary="New pieces are taken now",
             responses={503: ERRORS[503], 401: ERRORS[401]})
    async def readyz():
        why = pool.unready()
        if why:
            return JSONResponse({"error": why}, 503)
        return {"status": "ready", "backend": pool.backend, "engines": len(pool.engines), "rows": pool.rows,
                "active": pool.active, "waiting": pool.waiting()}

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, 401: ERRORS[401]})
    async def metrics_endpoint():
        data, content_type = metrics.exposition()
        return Response(data, media_type=content_type)

    @app.get("/v1/prompts", response_model=PromptsOut, summary="Valid period / composer / instrumentation",
             responses={401: ERRORS[401]})
    async def prompts():
        return {"prompts": [p.as_dict() for p in valid_prompts()]}

    # exclude_unset: the formats asked for, as the stream's done event has them (null: one that failed)
    @app.post("/v1/pieces", response_model=PieceOut, response_model_exclude_unset=True, summary="Generate a piece",
              responses=ERRORS)
    async def create_piece(body: request_model, request: Request):
        job = start(body, "/v1/pieces", stream=False, continuation=await _upload(body))
        try:
            if not await job.wait(request.is_disconnected):
                return Response(status_code=499)  # nobody reads it
        finally:  # the request task was cancelled (a proxy saw the client leave): free the row
            job.cancel()
        return await job.result()

    @app.post("/v1/pieces/stream", summary="Generate a piece, streaming each bar",
              response_class=StreamingResponse, responses={200: STREAM_DOC, **ERRORS})
    async def stream_piece(body: request_model):
        job = start(body, "/v1/pieces/stream", stream=True, continuation=await _upload(body))
        return StreamingResponse(job.events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    if api_key:
        _document_the_key(app)
    return app


def _document_the_key(app: FastAPI) -> None:
    """The schema says how to send the key (Swagger's Authorize button sends it with each try)."""
    plain = app.openapi

    def openapi() -> dict:
        schema = plain()  # made once, then cached by FastAPI
        if "securitySchemes" not in schema.get("components", {}):
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
            schema["security"] = [{"bearer": []}, {"apiKey": []}]
            for operation in schema["paths"].get("/healthz", {}).values():
                operation["security"] = []
        return schema

    app.openapi = openapi


async def _upload(body: PieceIn) -> Continuation | None:
    """The piece to continue, converted off the event loop (music21 takes a second on a MIDI file)."""
    if body.continuation is None:
        return None
    try:
        data = base64.b64decode(body.continuation.data, validate=True)
    except (binascii.Error, ValueError):  # ValueError: characters outside ASCII
        raise ApiError(422, "continuation.data: not base64; send the file's bytes base64-encoded") from None
    try:
        return await asyncio.to_thread(parse_continuation, body.continuation.name, data)
    except NotaGenError as exc:
        raise ApiError(422, str(exc)) from None


def _prompt(body: PieceIn) -> Prompt | None:
    given = (body.period, body.composer, body.instrumentation)
    if any(v is not None for v in given) and any(v is None for v in given):
        raise ApiError(422, "give all three of period, composer and instrumentation, or none of them")
    try:
        return resolve_prompt(*given)
    except NotaGenError as exc:  # its hints name the CLI's flags and command; here they are fields and GET /v1/prompts
        line = str(exc).replace("--period", "period").replace("`notagen-trt prompts` lists", "GET /v1/prompts lists")
        raise ApiError(422, line) from None


def _validation_line(exc: RequestValidationError) -> tuple[int, str]:
    """(status, one line) for pydantic's list of errors: the first, naming its field."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        where = first["loc"][-1] if len(first.get("loc", ())) > 1 else "?"
        return 400, f"malformed JSON at character {where}: {first.get('ctx', {}).get('error', 'cannot decode')}"
    field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request body"
    msg = str(first.get("msg", "invalid")).replace("\n", " ")
    line = f"{field}: {msg[:1].lower()}{msg[1:]}"
    if "input" in first and first.get("type") != "missing":
        given = repr(first["input"])
        line += f", got {given if len(given) <= 60 else given[:57] + '...'}"
    return 422, line + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")


def _error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    def reply(request: Request, status: int, message: str, outcome: str, headers: dict | None = None) -> JSONResponse:
        metrics.outcome(request.url.path, outcome)
        return JSONResponse({"error": message}, status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        if exc.outcome in ("error", "cancelled"):  # the job recorded its own outcome
            return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)
        return reply(request, exc.status, exc.message, exc.outcome, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        status, line = _validation_line(exc)
        kind = request.headers.get("content-type") or "none"
        if "json" not in kind and any(isinstance(e.get("input"), bytes) for e in exc.errors()):
            # FastAPI reads a body as JSON only when it says so (curl -d sends form encoding).
            line = (f"the body is not read as JSON: send it with Content-Type: application/json (curl: -H "
                    f"'Content-Type: application/json'), not {kind}")
        return reply(request, status, line, "invalid")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        message = {404: f"no such endpoint: {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return reply(request, exc.status_code, message, "invalid", getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):  # a bug: say so in one line, keep serving
        line = str(exc).splitlines()[0] if str(exc) else ""
        return reply(request, 500, f"internal error: {type(exc).__name__}: {line}", "error")
