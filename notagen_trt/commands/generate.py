"""`notagen-trt generate`: pieces from a model through the engine, written as they end."""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

from notagen_trt import allocator
from notagen_trt.corpus import LONGEST_TRAINED_BARS, SHORTEST_TRAINED_BARS, rare_prompt
from notagen_trt.errors import NotaGenError
from notagen_trt.files import prepare_out_dir, refuse_model_dir

from .argtypes import rows

MAX_PIECES = 1_000_000  # requests are made lazily; this only guards against a typo of many zeros


def _cmd_generate(args: argparse.Namespace) -> int:
    from notagen_trt.runtime.engine import PieceRequest, load_engine
    from notagen_trt.runtime.outputs import write_piece
    from notagen_trt.runtime.piece import GenerationConfig
    from notagen_trt.runtime.prompts import resolve_prompt
    from notagen_trt.runtime.render import piece_abc, piece_stem
    from notagen_trt.runtime.sampling import SamplingParams

    if not 1 <= args.num_pieces <= MAX_PIECES:
        raise NotaGenError(f"--num-pieces must be at least 1 and at most {MAX_PIECES:,}, got {args.num_pieces}")
    prompt = resolve_prompt(args.period, args.composer, args.instrumentation)
    try:
        sampling = SamplingParams(args.top_k, args.top_p, args.temperature)
    except ValueError as exc:
        raise NotaGenError(as_flags(str(exc))) from None
    if args.continue_ and (args.meter or args.key):
        raise NotaGenError("--meter and --key set a new piece's header; a continued piece keeps its file's "
                           "(drop them, or drop --continue)")

    def config(k: int) -> GenerationConfig:
        try:
            return GenerationConfig(seed=args.seed + k, sampling=sampling, max_patches=args.max_patches,
                                    max_seconds=args.max_seconds, bars=args.bars, meter=args.meter, key=args.key)
        except ValueError as exc:
            where = f" (piece {k + 1}'s seed: --seed + {k})" if k and str(exc).startswith("seed") else ""
            raise NotaGenError(as_flags(str(exc)) + where) from None

    config(0), config(args.num_pieces - 1)  # bad values fail here, before a model is loaded
    continuation = None
    if args.continue_:  # an unreadable file fails here too
        from notagen_trt.runtime.continuation import read_continuation

        continuation = read_continuation(args.continue_)
        prompt = prompt or continuation.prompt  # a corpus piece carries its own prompt lines
    formats = _formats(args.formats)
    # A bad --out fails before the work too; the folders made for it go again if the command fails
    # before writing there (cli.main: no model, no backend).
    out = prepare_out_dir(Path(args.out), "generate")
    refuse_model_dir(out, "generate")
    engine = load_engine(args.model, args.backend, args.precision, args.rows, pieces=args.num_pieces)
    if not args.json:
        print(f"backend: {engine.note}", file=sys.stderr)
        if args.bars is not None and args.model is None and not args.continue_:
            if args.bars < SHORTEST_TRAINED_BARS:
                print(f"note: --bars {args.bars} is shorter than any piece the demo model was trained on; the model "
                      "may write more bars (see --help)", file=sys.stderr)
            elif args.bars > LONGEST_TRAINED_BARS:
                print(f"note: --bars {args.bars} is longer than any piece the demo model was trained on "
                      f"({LONGEST_TRAINED_BARS + 1} bars); the model may end sooner (see --help)", file=sys.stderr)
        if prompt is not None and args.model is None and not args.continue_:
            _note_rare_prompt(prompt)
    summary = _Summary({"backend": engine.executor.name, "note": engine.note, "model": str(args.model or "demo"),
                        "allocator": allocator.current()},
                       sys.stdout if args.json else None, wants_scores=len(formats) > 1)

    def save(handle) -> dict:
        """Write a piece the moment it ends: a later failure or interrupt cannot lose it."""
        piece, cfg = handle.piece, handle.request.config
        abc = piece_abc(prompt, cfg, piece, engine.made_by)  # the service returns the same text
        if continuation is not None:  # the user's bars, a marker comment, the new bars
            abc = continuation.mark(abc)
        stem = piece_stem(prompt, cfg.seed, cfg.bars, cfg.sampling, cfg.meter, cfg.key, args.continue_)
        files, errors = write_piece(out, stem, abc, formats)
        return {"seed": cfg.seed, "prompt": prompt.as_dict() if prompt else None, "patches": piece.patches,
                "stop_reason": piece.stop_reason, "complete": piece.complete, "seconds": round(piece.seconds, 3),
                "ms_per_patch": round(1000 * piece.seconds / max(1, piece.patches), 3), "files": files,
                "errors": errors}

    def request(cfg: GenerationConfig) -> PieceRequest:
        return PieceRequest(prompt, cfg, text=continuation.text(prompt, cfg) if continuation else None)

    requests = (request(config(k)) for k in range(args.num_pieces))
    with engine, summary, _Progress(args.num_pieces, quiet=args.json) as progress:
        writer = _Writer(save, progress, summary, limit=2 * engine.executor.rows)

        def on_event(event) -> None:
            progress.on_event(event)
            writer.report()  # between patches: a written piece's line need not wait for the next end

        try:
            for handle in engine.run(requests, on_event):
                writer.submit(handle)
        finally:  # also after Ctrl-C or an error: pieces that ended are written and reported
            writer.close()
    if summary.unconverted:  # the user asked for scores and got none for these pieces: not a success
        seed, why = summary.first_unconverted
        print(f"notagen-trt generate: error: {summary.unconverted} of {summary.count} pieces have only their .abc "
              f"(seed {seed}: {why})", file=sys.stderr)
        return 1
    return 0


class _Writer:
    """Each ended piece's files are written on a thread of their own, in the order the pieces end,
    while the engine steps the other rows: converting scores would otherwise stall every row (and
    count in their ms/patch). Lines and summary rows follow on the engine's thread as the writes
    finish. At most ``limit`` pieces wait to be written (memory stays flat when writes fall behind)."""

    def __init__(self, save, progress: "_Progress", summary: "_Summary", limit: int) -> None:
        self.save, self.progress, self.summary, self.limit = save, progress, summary, limit
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="notagen-trt-writer")
        self.queued: deque[Future] = deque()
        self.failed: Exception | None = None  # the first write that failed (a full disk): raised by submit / close
        self.open = True
        self._reporting = threading.Lock()  # this thread's submit and the engine's threads' events

    def submit(self, handle) -> None:
        self.queued.append(self.pool.submit(self.save, handle))
        with self._reporting:  # the engine's threads' reports take from the head too
            head = self.queued[0] if len(self.queued) > self.limit else None
        if head is not None:
            wait([head])
        self.report()
        if self.failed is not None:
            raise self.failed

    def report(self) -> None:
        """Report the writes that have finished, in order (also from the engine's events: never raises;
        a report already under way on another thread covers them)."""
        if not self._reporting.acquire(blocking=False):
            return
        try:
            while self.open and self.queued and self.queued[0].done():
                self._add(self.queued.popleft())
        finally:
            self._reporting.release()

    def _add(self, future: Future) -> None:
        try:
            row = future.result()
        except Exception as exc:  # the others still count
            self.failed = self.failed or exc
            return
        self.progress.piece_done(row)
        self.summary.add(row)

    def close(self) -> None:
        """Wait for every queued write and report it, then raise the first that failed."""
        try:
            with self._reporting:
                while self.queued:
                    self._add(self.queued.popleft())
        finally:
            self.open = False  # nothing is reported after the summary closes (the engine's last events)
            self.pool.shutdown(wait=True)
        if self.failed is not None:
            raise self.failed


class _Summary:
    """The --json summary, printed as pieces end (the header, a line per piece in the order they
    ended, then the totals), so memory does not grow with --num-pieces. It is closed, as valid
    JSON, on every way out but a kill (``"interrupted": true`` after Ctrl-C or an error)."""

    def __init__(self, header: dict, stream, wants_scores: bool) -> None:
        self.header, self.stream, self.wants_scores = header, stream, wants_scores
        self.count, self.unconverted, self.first_unconverted = 0, 0, None
        self.start = time.perf_counter()

    def __enter__(self) -> "_Summary":
        if self.stream is not None:
            self.stream.write(json.dumps(self.header)[:-1] + ', "pieces": [')
        return self

    def add(self, row: dict) -> None:
        if self.wants_scores and list(row["files"]) == ["abc"]:
            self.unconverted += 1
            self.first_unconverted = self.first_unconverted or (row["seed"], next(iter(row["errors"].values()), ""))
        if self.stream is not None:
            self.stream.write(("," if self.count else "") + "\n  " + json.dumps(row))
            self.stream.flush()
        self.count += 1

    def __exit__(self, kind, *exc: object) -> None:
        if self.stream is not None:
            totals = {"seconds": round(time.perf_counter() - self.start, 3), "unconverted": self.unconverted,
                      "interrupted": kind is not None}
            self.stream.write("\n], " + json.dumps(totals)[1:] + "\n")
            self.stream.flush()


_FIELDS = re.compile(r"\b(seed|max_patches|max_seconds|bars|meter|key|top_k|top_p|temperature)\b")


def as_flags(message: str) -> str:
    """A GenerationConfig / SamplingParams error names its field (the API's name); here, the flag."""
    return _FIELDS.sub(lambda m: "--" + m.group(1).replace("_", "-"), message, count=1)




def _note_rare_prompt(prompt) -> None:
    """The demo model learnt a prompt from the pieces of the shipped corpus that carry it: say so
    when those are few (its pieces may then never write the end, see the README)."""
    rare = rare_prompt(prompt.period, prompt.composer, prompt.instrumentation)
    if rare:
        seen, best, count = rare
        print(f"note: the demo model saw this prompt in {seen} training piece{'s' * (seen != 1)} (it knows {' / '.join(best)} "
              f"best: {count}); its pieces may run on without ending: --max-patches or --max-seconds cut them",
              file=sys.stderr)


def _formats(text: str) -> tuple[str, ...]:
    from notagen_trt.runtime.outputs import FORMATS, parse_formats

    asked = parse_formats(text, "--formats")
    return ("abc", *(f for f in FORMATS[1:] if f in asked))  # the .abc is always written


class _Progress:
    """A rich progress bar on a terminal (pieces and patches); a line per piece otherwise."""

    HEARTBEAT = 30.0  # seconds between "still generating" lines when stderr is not a terminal

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.quiet, self.patches, self.bar = total, quiet, 0, None
        self.done, self.last_line = 0, time.monotonic()
        if not quiet and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TextColumn("pieces"),
                                TextColumn("{task.fields[patches]} patches"), TimeElapsedColumn(), transient=True)
            self.task = self.bar.add_task("generating", total=total, patches=0)

    def __enter__(self) -> "_Progress":
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def on_event(self, event) -> None:
        if event.kind != "patch":
            return
        self.patches += 1
        if self.bar is not None:
            self.bar.update(self.task, patches=self.patches)
        elif not self.quiet and time.monotonic() - self.last_line > self.HEARTBEAT:  # a log, a CI job
            self.last_line = time.monotonic()
            print(f"generating: {self.done} of {self.total} pieces written, {self.patches} patches so far",
                  file=sys.stderr)

    def piece_done(self, r: dict) -> None:
        self.done += 1
        self.last_line = time.monotonic()
        if self.bar is not None:
            self.bar.advance(self.task)
        if self.quiet:
            return
        note = "" if r["complete"] else f" (stopped: {r['stop_reason']})"
        fails = "".join(f"\n    {k} failed: {v}" for k, v in r["errors"].items())
        line = (f"seed {r['seed']}: {r['patches']} patches, {r['ms_per_patch']} ms/patch{note} -> "
                f"{', '.join(r['files'].values())}{fails}")
        (self.bar.console.print if self.bar is not None else lambda s: print(s, file=sys.stderr))(line)


def register(sub: argparse._SubParsersAction) -> None:
    from .prompts import add_prompt_arguments

    from notagen_trt.runtime.backends import CHOICES, PRECISIONS

    p = sub.add_parser("generate", help="generate pieces (ABC, MusicXML, MIDI, SVG) on the fastest backend here")
    p.add_argument("--model", help="model directory (export, precision variant or engine) or a .pth / "
                                   ".safetensors checkpoint (default: the demo model)")
    p.add_argument("--backend", default="auto", metavar="{" + ",".join(CHOICES) + "}",
                   help="auto (default): the fast CUDA path, a TensorRT engine, ONNX Runtime CUDA, then CPU, "
                        "whichever runs here first")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="fast CUDA path: fp32 (the reference's pieces bit for bit), fp16 (default) or int8-wo; "
                        "other backends run the precision of their model directory, which must match it "
                        "(`notagen-trt quantize` makes fp16 / int8-wo ones)")
    p.add_argument("--rows", type=rows, default=None,
                   help="pieces in flight at once (default: 16 on the fast path, or what the GPU's free memory holds, "
                        "and on engine-ready graphs with CUDA, 4 on ONNX Runtime CPU, 1 elsewhere, never more than "
                        "--num-pieces; at most 64)")
    add_prompt_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the first piece; piece k uses seed + k (default 0)")
    p.add_argument("--num-pieces", type=int, default=1, help="pieces to write, one per seed (default 1)")
    p.add_argument("--bars", type=int, default=None,
                   help="ask for N+1 bar lines: the body starts with the forced prefix [r:0/N], which the model "
                        "was trained to count down to [r:N/0]. It conditions, it does not cut: a model follows it "
                        f"only for lengths it was trained on (the demo model from N={SHORTEST_TRAINED_BARS}: its "
                        "corpus has no piece under 8 bars; shorter asks come out longer)")
    p.add_argument("--meter", help="the piece's meter, forced into its header (bars of another length are sampled "
                                   "again): 3/4, 6/8, 2/2, C ...")
    p.add_argument("--key", help="the piece's key, forced into its header and the voices' first bars: D, Dm, Bb, F#m, "
                                 "or a mode such as Ddor, Gmix (written as the corpus spells it: Dmin, F#min)")
    p.add_argument("--continue", dest="continue_", metavar="FILE",
                   help="continue this piece (.abc, .musicxml, .xml, .mxl, .mid): its bars are the context, the "
                        "output is them, a comment line, then the new bars (--bars: how many to ask for, default "
                        "16; a file longer than the context keeps its header and last bars)")
    p.add_argument("--max-patches", type=int, default=None,
                   help="stop a piece after this many patches (default: no limit but --max-seconds)")
    p.add_argument("--max-seconds", type=float, default=600.0, help="stop a piece after this long (default 600)")
    p.add_argument("--top-k", type=int, default=9, help="sampling: keep the k most likely characters, 0 (off) to 128 (default 9)")
    p.add_argument("--top-p", type=float, default=0.9, help="sampling: nucleus mass (default 0.9)")
    p.add_argument("--temperature", type=float, default=1.2, help="sampling temperature, 0.01 to 10 (default 1.2)")
    p.add_argument("--out", default="out", help="folder for the generated files (default: out); a new tune "
                   "whose file name is taken by a different earlier piece is written as NAME_2, NAME_3...")
    p.add_argument("--formats", default="abc,musicxml,midi,svg",
                   help="files per piece (default: abc,musicxml,midi,svg; the .abc is always written). The exit "
                        "status is 1 when a piece got none of the others")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    p.set_defaults(func=_cmd_generate)
