"""`notagen-trt serve`: the HTTP service (FastAPI on uvicorn) over one engine per GPU, or the same
app on Ray Serve with one replica per GPU."""

from __future__ import annotations

import argparse
import errno
import socket
import sys

from notagen_trt.errors import NotaGenError

from .argtypes import rows, seconds, whole_number

LOOPBACK = ("127.0.0.1", "localhost", "::1")
SWITCH_INTERVAL = 0.0005  # seconds, for the GIL; see where uvicorn starts


def _need_extra(ray: bool) -> None:
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise NotaGenError(f"the service needs {exc.name}: pip install 'notagen-trt[serve]'") from None
    if ray:
        try:
            import ray as _  # noqa: F401
        except ImportError:
            raise NotaGenError("--ray needs Ray Serve: pip install 'notagen-trt[ray]'") from None


def _check_port(host: str, port: int) -> None:
    """Fail before loading a model, in one line, when the address cannot be bound."""
    if not 0 < port < 65536:
        raise NotaGenError(f"--port must be in 1..65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            why = "the port is in use; pick another --port" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise NotaGenError(f"cannot listen on {host}:{port}: {why}") from None


def _cmd_serve(args: argparse.Namespace) -> int:
    from notagen_trt.serve.settings import read_api_key

    _need_extra(args.ray)
    settings = settings_from_args(args, max_body=args.max_body,
                                  api_key=read_api_key(args.api_key_file) if args.api_key_file else None)

    def log(line: str) -> None:
        print(f"serve: {line}", file=sys.stderr)

    if args.host not in LOOPBACK and settings.api_key is None:
        log(f"warning: listening on {args.host} without --api-key-file: anyone who reaches it can use it")
    _check_port(args.host, args.port)
    if args.ray:
        from notagen_trt.serve.ray_app import run

        run(settings, args.host, args.port, args.replicas, args.min_replicas, log)
        return 0
    from notagen_trt.serve.app import create_app
    from notagen_trt.serve.server import run
    from notagen_trt.serve.settings import load_pool

    pool = load_pool(settings, log)
    try:
        app = create_app(pool, api_key=settings.api_key, max_body=settings.max_body, max_patches=settings.max_patches)
        # One process, one event loop: the engines' threads do the work; uvicorn workers would each load a model.
        # A GPU idles while its engine thread waits for the GIL after a patch, up to the switch
        # interval (5 ms by default, more than a patch); the event loop and other engines hold it.
        sys.setswitchinterval(SWITCH_INTERVAL)
        limits = (f"{pool.made_by}; {pool.rows} rows, up to {settings.max_queue} waiting; "
                  + (f"pieces capped at {settings.max_patches} patches; " if settings.max_patches else "")
                  + f"bodies up to {settings.max_body // 1024} KB; "
                  + ("API key required" if settings.api_key else "no API key"))
        run(app, pool, args.host, args.port, args.log_level, args.grace,
            f"http://{args.host}:{args.port} ({limits}). OpenAPI docs at /docs; Ctrl-C or SIGTERM stops, running "
            f"pieces get {args.grace:g} s", log)
    finally:
        pool.close()
    return 0


def settings_from_args(args: argparse.Namespace, **more):
    """The ServeSettings of add_engine_arguments' options, and ``more``."""
    from notagen_trt.serve.settings import ServeSettings

    return ServeSettings(model=args.model, backend=args.backend, precision=args.precision, rows=args.rows,
                         threads=args.threads, gpus=args.gpus, max_queue=args.max_queue, max_patches=args.max_patches,
                         **more)


def add_engine_arguments(p: argparse.ArgumentParser, port: int, rows_help: str, queue_help: str) -> None:
    """The model, engine and listening options `serve` and `ui` share."""
    from notagen_trt.runtime.backends import CHOICES, PRECISIONS
    from notagen_trt.serve.settings import CPU_ROWS, DEFAULT_GRACE, DEFAULT_MAX_QUEUE, GPU_ROWS

    p.add_argument("--model", help="model directory or checkpoint (default: the demo model)")
    p.add_argument("--backend", default="auto", metavar="{" + ",".join(CHOICES) + "}",
                   help="as for generate (default auto)")
    p.add_argument("--precision", choices=PRECISIONS, default=None, help="as for generate")
    p.add_argument("--rows", type=rows, default=None,
                   help=f"{rows_help} (default: the backend's, {GPU_ROWS} on a GPU, {CPU_ROWS} on a CPU; "
                        f"at least {CPU_ROWS})")
    p.add_argument("--threads", type=whole_number(1), default=None,
                   help="ONNX Runtime CPU threads per call (default: one, rows side by side a core each; "
                        "for models of hidden size 512 and up, every row in one call on every core)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=port, help=f"port (default {port})")
    p.add_argument("--gpus", default="all",
                   help="all (default): one engine per visible GPU (fast CUDA path); 0,1: those GPUs; none: the CPU")
    p.add_argument("--max-queue", type=whole_number(1), default=DEFAULT_MAX_QUEUE,
                   help=f"pieces that may wait for a row; {queue_help} (default {DEFAULT_MAX_QUEUE})")
    p.add_argument("--max-patches", type=whole_number(1), default=None,
                   help="cap every piece at this many patches (requests may ask for fewer)")
    p.add_argument("--grace", type=seconds, default=DEFAULT_GRACE, metavar="SECONDS",
                   help=f"on SIGTERM or Ctrl-C, seconds running pieces get to finish; then the rest end and "
                        f"their clients are told the service is shutting down (default {DEFAULT_GRACE:g})")


def register(sub: argparse._SubParsersAction) -> None:
    from notagen_trt.serve.settings import DEFAULT_MAX_BODY

    p = sub.add_parser("serve", help="serve pieces over HTTP (FastAPI; in-flight batching; optional Ray Serve)")
    add_engine_arguments(p, port=8000, rows_help="pieces in flight per engine; requests beyond wait in the queue",
                         queue_help="more are answered 503")
    p.add_argument("--max-body", type=whole_number(1), default=DEFAULT_MAX_BODY,
                   help=f"request body limit in bytes; larger is 413 (default {DEFAULT_MAX_BODY})")
    p.add_argument("--api-key-file", help="a file holding the API key every endpoint but /healthz requires "
                                          "(Authorization: Bearer KEY or X-API-Key: KEY)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (default info)")
    p.add_argument("--ray", action="store_true",
                   help="serve on Ray Serve (RAY_ADDRESS, or a local Ray): one replica per GPU or CPU process")
    p.add_argument("--replicas", type=whole_number(1), default=None,
                   help="--ray: most replicas (default: the cluster's GPUs, or half its CPUs)")
    p.add_argument("--min-replicas", type=whole_number(1), default=1, help="--ray: fewest replicas (default 1)")
    p.set_defaults(func=_cmd_serve)
