"""`notagen-trt ui`: the web page for people who make music, and the HTTP API beside it, in one
process over one engine pool (serve/ui.py mounted on serve/app.py's app)."""

from __future__ import annotations

import argparse
import sys

from notagen_trt.errors import NotaGenError

from .serve import LOOPBACK, _check_port, _need_extra, add_engine_arguments, settings_from_args

UPLOAD_BODY = 12 * 1024 * 1024  # a page upload (a score file, 8 MB at most) with its form encoding


def _cmd_ui(args: argparse.Namespace) -> int:
    _need_extra(ray=False)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise NotaGenError("the page needs gradio: pip install 'notagen-trt[ui]'") from None
    from notagen_trt.serve.settings import load_pool

    settings = settings_from_args(args, max_body=UPLOAD_BODY)

    def log(line: str) -> None:
        print(f"ui: {line}", file=sys.stderr)

    if args.host not in LOOPBACK:
        log(f"warning: listening on {args.host}: anyone who reaches it can use the page and the API")
    _check_port(args.host, args.port)
    from notagen_trt.serve.app import create_app
    from notagen_trt.serve.server import run
    from notagen_trt.serve.ui import mount_ui

    pool = load_pool(settings, log)
    try:
        app = mount_ui(create_app(pool, max_body=settings.max_body, max_patches=settings.max_patches), pool,
                       max_patches=settings.max_patches, demo=settings.model is None)
        run(app, pool, args.host, args.port, args.log_level, args.grace,
            f"http://{args.host}:{args.port}/ (the page; the API under /v1, its docs at /docs; Ctrl-C stops)", log)
    finally:
        pool.close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", help="a web page to write, hear and download pieces (Gradio), with the HTTP API beside it")
    add_engine_arguments(p, port=7860, rows_help="pieces written at once, from the page and the API together",
                         queue_help="more are told the server is busy")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (default warning)")
    p.set_defaults(func=_cmd_ui)
