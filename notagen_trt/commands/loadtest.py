"""`notagen-trt loadtest`: concurrent clients against a running `notagen-trt serve`; pieces per
minute, time to first bar and end-to-end latency, and (--check) that every piece is the one
`generate` writes for its seed and prompt."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from notagen_trt.errors import NotaGenError


def _cmd_loadtest(args: argparse.Namespace) -> int:
    try:
        import httpx  # noqa: F401
    except ImportError:
        raise NotaGenError("loadtest needs httpx: pip install 'notagen-trt[serve]'") from None
    from notagen_trt.serve.loadgen import check, request_bodies, run_load, summarize
    from notagen_trt.serve.settings import read_api_key

    if args.clients < 1 or args.requests < 1:
        raise NotaGenError(f"--clients and --requests must be at least 1, got {args.clients} and {args.requests}")
    if not args.url.startswith(("http://", "https://")):
        raise NotaGenError(f"--url {args.url!r}: give an http:// or https:// address")
    from notagen_trt.runtime.outputs import parse_formats

    outputs = list(parse_formats(args.outputs, "--outputs")) if args.outputs else None
    _check_request(args)
    _reachable(args.url)
    bodies = request_bodies(args.requests, args.seed, period=args.period, composer=args.composer,
                            instrumentation=args.instrumentation, max_patches=args.max_patches, bars=args.bars,
                            outputs=outputs)
    key = read_api_key(args.api_key_file) if args.api_key_file else None
    outcomes, wall = asyncio.run(run_load(args.url, bodies, args.clients, args.stream, key))
    summary = {"url": args.url, "clients": args.clients, "stream": args.stream, **summarize(outcomes, wall)}
    if args.check:
        backend, differ = check(outcomes, bodies, args.model, args.backend, args.precision, args.rows)
        summary["check"] = {"backend": backend, "compared": summary["ok"], "differ": len(differ), "first": differ[:3]}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _report(summary)
    return 1 if summary["errors"] or summary.get("check", {}).get("differ") else 0


def _check_request(args: argparse.Namespace) -> None:
    """What every request would be refused for is one line here, as `generate` says it, not N answers."""
    from notagen_trt.runtime.piece import GenerationConfig
    from notagen_trt.runtime.prompts import resolve_prompt

    from .generate import as_flags

    resolve_prompt(args.period, args.composer, args.instrumentation)
    try:
        GenerationConfig(seed=args.seed + args.requests - 1, max_patches=args.max_patches, bars=args.bars)
    except ValueError as exc:
        raise NotaGenError(as_flags(str(exc))) from None


def _reachable(url: str) -> None:
    """One request before the load: a service that is not there, or an address that is not a
    service's (a path added, another server), is one line, not N errors."""
    import httpx

    try:
        response = httpx.get(url.rstrip("/") + "/healthz", timeout=10.0)
    except httpx.HTTPError as exc:
        raise NotaGenError(f"--url {url}: no service answers there ({type(exc).__name__}: {exc}); start one with "
                           "`notagen-trt serve` or give its address") from None
    try:
        body = response.json()
    except ValueError:
        body = None
    healthy = response.status_code == 200 and isinstance(body, dict) and body.get("status") == "ok"
    if not healthy:
        raise NotaGenError(f"--url {url}: not a notagen-trt service (GET /healthz answered HTTP {response.status_code}); "
                           "give the address `notagen-trt serve` prints, e.g. http://127.0.0.1:8000")


def _report(s: dict) -> None:
    def spread(p: dict | None) -> str:
        return f"p50 {p['p50']:.2f} s, p99 {p['p99']:.2f} s" if p else "n/a"

    by_status = ", ".join(f"{n} {'no response' if status == 0 else f'HTTP {status}'}"
                          for status, n in s["errors_by_status"].items())
    print(f"{s['requests']} requests by {s['clients']} clients ({'streaming' if s['stream'] else 'plain'}): "
          f"{s['ok']} pieces, {s['errors']} errors{f' ({by_status})' if by_status else ''} in {s['seconds']:.1f} s")
    print(f"  pieces per minute: {s['pieces_per_minute']:.2f} ({s['patches']} patches)")
    print(f"  end to end: {spread(s['end_to_end_seconds'])}")
    if s["stream"]:
        print(f"  first bar: {spread(s['first_bar_seconds'])}")
    for line in s["first_errors"]:
        print(f"  error: {line}", file=sys.stderr)
    if "check" in s:
        c = s["check"]
        print(f"check: {c['compared'] - c['differ']} of {c['compared']} pieces equal the local engine's ({c['backend']})")
        for line in c["first"]:
            print(f"  differs: {line}", file=sys.stderr)


def register(sub: argparse._SubParsersAction) -> None:
    from .prompts import add_prompt_arguments

    p = sub.add_parser("loadtest", help="load-test a running `notagen-trt serve` (pieces/min, latency, --check)")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the service (default http://127.0.0.1:8000)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--requests", type=int, default=32, help="pieces to ask for in all (default 32)")
    p.add_argument("--stream", action="store_true", help="use the streaming endpoint (times the first bar too)")
    p.add_argument("--check", action="store_true",
                   help="afterwards, make the same pieces on a local engine (--model, --backend) and compare")
    p.add_argument("--seed", type=int, default=0, help="seed of the first request; request k uses seed + k")
    add_prompt_arguments(p)
    p.add_argument("--max-patches", type=int, default=None, help="each request's max_patches (default: none)")
    p.add_argument("--bars", type=int, default=None, help="each request's bars (default: none)")
    p.add_argument("--outputs", default=None, help="comma-separated: abc,musicxml,midi,svg (default: abc)")
    p.add_argument("--api-key-file", help="file holding the service's API key")
    p.add_argument("--model", help="--check: the model the service runs (default: the demo model)")
    p.add_argument("--backend", default="auto", help="--check: the backend the service runs (default auto)")
    p.add_argument("--precision", default=None, help="--check: as for generate")
    p.add_argument("--rows", type=int, default=None, help="--check: rows of the local engine")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=_cmd_loadtest)
