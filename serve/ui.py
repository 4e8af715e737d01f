"""The web page for people who make music (`notagen-trt ui`): a Gradio page mounted on the
service's FastAPI app, so one process serves the page and the API and every piece, from either,
joins the same engine batches.

Choose a period, composer and instrumentation (only combinations the model knows), a seed, a
length, a meter and key, or a file to continue; the score is drawn by verovio as bars arrive (the
engine's bar events), page by page; the ABC sits beside it; at the end a player (the MIDI played
offline through a General MIDI SoundFont) and the files to download. Errors are sentences on the
page. Needs the ``ui`` extra (gradio, tinysoundfont, pretty-midi) beside ``serve`` and ``music``.
"""

from __future__ import annotations

import asyncio
import html
import re
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from pathlib import Path

from notagen_trt.corpus import SHORTEST_TRAINED_BARS, rare_prompt
from notagen_trt.errors import NotaGenError
from notagen_trt.runtime import codec
from notagen_trt.runtime.continuation import MAX_BYTES, SUFFIXES, Continuation, parse_continuation
from notagen_trt.runtime.engine import PieceRequest
from notagen_trt.runtime.piece import GenerationConfig
from notagen_trt.runtime.postprocess import postprocess
from notagen_trt.runtime.prompts import Prompt, valid_prompts
from notagen_trt.runtime.sampling import SamplingParams

from .metrics import ServiceMetrics
from .pool import EnginePool, QueueFull
from .schemas import PUBLISHED

ANY = "the model's choice"
METERS = [ANY, "2/4", "3/4", "4/4", "6/8", "2/2", "3/8", "9/8", "12/8", "C"]
# Majors round the circle of fifths to six accidentals each way, minors to five sharps and six
# flats, then modes the corpus uses; any other key can be typed in.
KEYS = [ANY, "C", "G", "D", "A", "E", "B", "F#", "F", "Bb", "Eb", "Ab", "Db", "Gb",
        "Am", "Em", "Bm", "F#m", "C#m", "G#m", "Dm", "Gm", "Cm", "Fm", "Bbm", "Ebm",
        "Ador", "Ddor", "Edor", "Amix", "Dmix", "Gmix"]
DEFAULT_PROMPT = ("Baroque", "Bach, Johann Sebastian", "Choral")  # what the demo model writes best
RENDER_EVERY = 1.0  # seconds between score redraws while bars arrive (a redraw costs abc2xml + verovio)
KEEP_FILES = 3600  # seconds a finished piece's files stay downloadable
# abc2xml, verovio and music21 keep module state: two pages drawing at once must take turns.
CONVERTING = threading.Lock()
UPLOAD_TYPES = list(SUFFIXES)
CSS = """
#score .page { background: white; margin: 0 0 12px 0; border: 1px solid #ddd; }
#score .page svg { width: 100%; height: auto; }
#score .page-label { font-size: 12px; color: #666; margin: 4px 0; }
#status { min-height: 1.5em; }
#downloads a { margin-right: 1em; }
#random-seed input:focus-visible, #length input:focus-visible { outline: 2px solid #2563eb; outline-offset: 2px; }
"""
# On load: the status line is a live region, so a screen reader says "Writing…", "Done: …" and
# each error sentence as it appears (a plain block was silent).
JS = """() => {
  const status = document.getElementById('status');
  if (status) { status.setAttribute('role', 'status'); status.setAttribute('aria-live', 'polite'); }
}"""
IDLE_POLL_SECONDS = 0.02  # how often Gradio's idle queue looks for work (see mount)


# ---- the prompt menus --------------------------------------------------------------------------------
def periods() -> list[str]:
    return sorted({p.period for p in valid_prompts()})


def composers(period: str | None) -> list[str]:
    return sorted({p.composer for p in valid_prompts() if p.period == period})


def instrumentations(period: str | None, composer: str | None) -> list[str]:
    return sorted({p.instrumentation for p in valid_prompts() if (p.period, p.composer) == (period, composer)})


def chosen_prompt(period: str | None, composer: str | None, instrumentation: str | None) -> Prompt:
    prompt = Prompt(period or "", composer or "", instrumentation or "")
    if prompt not in valid_prompts():
        raise NotaGenError(f"{composer or 'no composer'} with {instrumentation or 'no instrumentation'} in the "
                           f"{period or 'no'} period is not a combination the model knows; pick again from the menus")
    return prompt


# ---- drawing the score -------------------------------------------------------------------------------
def score_html(abc: str) -> str:
    """Every page of the score as its own SVG (verovio, from abc2xml's MusicXML); raises ValueError."""
    from notagen_trt.runtime.abcio import to_musicxml

    with CONVERTING:
        return pages_html(to_musicxml(abc))


def pages_html(musicxml: str) -> str:
    from notagen_trt.runtime.outputs import verovio_toolkit

    tk = verovio_toolkit()
    tk.setOptions({"adjustPageHeight": True, "footer": "none", "header": "none", "scale": 40, "pageWidth": 2200,
                   "breaks": "auto"})
    if not tk.loadData(musicxml):
        raise ValueError("verovio could not read the score")
    n = tk.getPageCount()
    return "".join(f'<div class="page-label">page {i} of {n}</div><div class="page" data-page="{i}" role="img" '
                   f'aria-label="Score, page {i} of {n} (the ABC beside it is the same music as text)">'
                   f"{tk.renderToSVG(i)}</div>" for i in range(1, n + 1))


def closed_lines(text: str) -> str:
    """A piece in progress, post-processed, up to its last whole line (a line holds every voice)."""
    return postprocess(text[: text.rfind("\n") + 1])


# ---- a finished piece's files --------------------------------------------------------------------------
class PieceFiles:
    """Each finished piece's files in a folder of its own under one temporary folder, served at
    ``{prefix}/{token}/{name}``; folders older than KEEP_FILES go when a new piece is stored."""

    def __init__(self, prefix: str = "/ui-files") -> None:
        self.prefix = prefix
        self.root = Path(tempfile.mkdtemp(prefix="notagen-ui-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.root, True)

    def store(self, files: dict[str, bytes | str]) -> dict[str, str]:
        """{file name: URL} for the files written."""
        cutoff = time.time() - KEEP_FILES
        for old in self.root.iterdir():
            if old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        token = secrets.token_urlsafe(12)
        folder = self.root / token
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        return {name: f"{self.prefix}/{token}/{name}" for name in files}

    def path(self, token: str, name: str) -> Path | None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{8,64}", token) or not re.fullmatch(r"[A-Za-z0-9_.#-]{1,120}", name):
            return None
        path = self.root / token / name
        return path if path.is_file() else None

    def close(self) -> None:
        self._cleanup()


MEDIA_TYPES = {".abc": "text/vnd.abc; charset=utf-8", ".musicxml": "application/vnd.recordare.musicxml+xml",
               ".mid": "audio/midi", ".svg": "image/svg+xml", ".wav": "audio/wav"}


def finished_files(abc: str, stem: str) -> tuple[dict[str, bytes | str], dict[str, str], str]:
    """({file name: data}, {kind: why it failed}, score HTML) of a finished piece: its ABC,
    MusicXML, MIDI, SVG and the MIDI played to a WAV (blocking: run it off the event loop)."""
    from notagen_trt.runtime.outputs import convert

    from .audio import midi_to_wav

    with CONVERTING:
        made, errors = convert(abc)
    files: dict[str, bytes | str] = {f"{stem}.abc": abc}
    names = {"musicxml": f"{stem}.musicxml", "midi": f"{stem}.mid", "svg": f"{stem}.svg"}
    files.update({names[kind]: data for kind, data in made.items()})
    score = ""
    if "musicxml" in made:
        try:
            with CONVERTING:
                score = pages_html(made["musicxml"])
        except Exception as exc:  # noqa: BLE001 - the files stay downloadable without a drawing
            errors["score"] = _line(exc)
    if "midi" in made:
        try:
            files[f"{stem}.wav"] = midi_to_wav(made["midi"])
        except Exception as exc:  # noqa: BLE001 - an odd MIDI costs the player, not the piece
            errors["audio"] = _line(exc)
    return files, errors, score


def player_html(urls: dict[str, str]) -> str:
    wav = next((url for name, url in urls.items() if name.endswith(".wav")), None)
    return (f'<audio id="player-audio" controls preload="auto" aria-label="The piece, played" '
            f'src="{html.escape(wav)}"></audio>') if wav else ""


def downloads_html(urls: dict[str, str]) -> str:
    labels = {".abc": "ABC", ".musicxml": "MusicXML", ".mid": "MIDI", ".svg": "SVG score", ".wav": "audio (WAV)"}
    links = [f'<a href="{html.escape(url)}" download="{html.escape(name)}" data-kind="{Path(name).suffix[1:]}">'
             f"{labels.get(Path(name).suffix, name)}</a>" for name, url in urls.items()]
    return "Download: " + " ".join(links) if links else ""


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _stem(prompt: Prompt, seed: int, continuation: Continuation | None) -> str:
    name = re.sub(r"[^A-Za-z0-9]+", "-", prompt.composer.split(",")[0]).strip("-").lower() or "piece"
    after = f"-after-{re.sub(r'[^A-Za-z0-9]+', '-', Path(continuation.name).stem).strip('-')}" if continuation else ""
    return f"notagen-{name}{after}-seed{seed}"


# ---- the page ------------------------------------------------------------------------------------------
def demo_notes(request: PieceRequest, prompt: Prompt | None) -> str:
    """What the demo model did not learn that this request asks for, as `generate` says it: a
    prompt of few training pieces, or fewer bars than its shortest piece. '' when nothing."""
    if request.text is not None:  # a continued piece: its own bars are the context
        return ""
    notes = []
    rare = prompt and rare_prompt(prompt.period, prompt.composer, prompt.instrumentation)
    if rare:
        seen, best, count = rare
        notes.append(f"the demo model saw this prompt in {seen} training piece{'s' * (seen != 1)} "
                     f"(it knows {' / '.join(best)} best: {count}); its pieces may run on without ending: Stop ends one")
    if request.config.bars is not None and request.config.bars < SHORTEST_TRAINED_BARS:
        notes.append(f"the demo model's shortest training pieces have {SHORTEST_TRAINED_BARS + 1} bars; it may "
                     "write more than asked")
    return "".join(f" Note: {n}." for n in notes)


def build_page(pool: EnginePool, files: PieceFiles, max_patches: int | None = None, demo: bool = False,
               metrics: ServiceMetrics | None = None):
    """The Gradio Blocks of the page, generating through ``pool`` (``demo``: the demo model, whose
    training data the page's notes know; ``metrics``: the service's, where its pieces are counted)."""
    import gradio as gr

    from notagen_trt.runtime.render import piece_abc

    def record(outcome: str, seconds: float | None = None) -> None:
        if metrics is not None:
            metrics.outcome("page", outcome, seconds)

    def request_for(period, composer, instrumentation, random_seed, seed, length, meter, key, temperature, top_k,
                    top_p, upload) -> tuple[PieceRequest, Prompt, Continuation | None]:
        """Everything the page asks for, checked; NotaGenError / ValueError hold a readable sentence."""
        prompt = chosen_prompt(period, composer, instrumentation)
        if random_seed or seed is None:
            seed = secrets.randbelow(2**31)
        meter = None if meter in (None, "", ANY) else meter
        key = None if key in (None, "", ANY) else key
        continuation = None
        if upload:
            path = Path(upload)
            if path.stat().st_size > MAX_BYTES:
                raise NotaGenError(f"{path.name}: larger than {MAX_BYTES // 2**20} MB; give one score file")
            continuation = parse_continuation(path.name, path.read_bytes())
            if meter or key:
                raise NotaGenError(f"a continued piece keeps the meter and key of {path.name} "
                                   f"(M:{continuation.field('M')}, K:{continuation.field('K')}); set meter and key "
                                   f"to '{ANY}', or remove the file")
        length = int(length or 0)
        bars = (length if continuation else length - 1) if length > 0 else None
        try:
            config = GenerationConfig(seed=int(seed), sampling=SamplingParams(int(top_k), float(top_p), float(temperature)),
                                      bars=bars, meter=meter, key=key, max_patches=max_patches)
        except ValueError as exc:
            raise NotaGenError(str(exc)) from None
        text = continuation.text(prompt, config) if continuation else None
        return PieceRequest(prompt, config, text=text, tag="ui"), prompt, continuation

    async def generate(*inputs):
        """The page's one long call: a readable sentence for anything that goes wrong, never a trace."""
        try:
            async for update in _generate(*inputs):
                yield update
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the page without an answer
            skip = gr.skip()
            yield f"⚠️ Something went wrong ({type(exc).__name__}: {_line(exc)}); the page still works, try again.", \
                skip, skip, skip, skip, skip

    async def _generate(period, composer, instrumentation, random_seed, seed, length, meter, key, temperature, top_k,
                        top_p, upload, state):
        skip = gr.skip()
        try:
            request, prompt, continuation = await asyncio.to_thread(
                request_for, period, composer, instrumentation, random_seed, seed, length, meter, key, temperature,
                top_k, top_p, upload)
        except (NotaGenError, ValueError, OSError) as exc:
            yield (f"⚠️ {_line(exc)}"), skip, skip, skip, skip, skip
            return
        config = request.config
        note = demo_notes(request, prompt) if demo else ""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

        def listen(event) -> None:  # on the engine's thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, (event.kind, event.text))
            except RuntimeError:  # the page's loop is gone: nobody is listening
                pass

        try:
            handle = pool.submit(request, listen)
        except QueueFull as exc:
            record("busy")
            yield (f"⚠️ The server is busy ({exc}); try again in a minute."), skip, skip, skip, skip, skip
            return
        submitted = time.perf_counter()
        state["handle"] = handle
        text = request.text if request.text is not None else "".join(prompt.lines())
        bars, drawn_at, score = 0, 0.0, ""
        what = f"continuing {continuation.name}" if continuation else f"seed {config.seed}"
        yield (f"Writing… ({what}).{note}"), config.seed, "", "", "", ""
        try:
            while True:
                kind, added = await events.get()
                while kind != "done" and not events.empty():  # catch up before drawing
                    text += added if kind == "bar" else ""
                    bars += kind == "bar" and added.endswith("\n")
                    kind, added = events.get_nowait()
                if kind == "done":
                    break
                if kind != "bar":
                    continue
                text += added
                bars += added.endswith("\n") and codec.is_body_line(text[text.rfind("\n", 0, len(text) - 1) + 1:])
                if time.monotonic() - drawn_at >= RENDER_EVERY and "[V:" in text:
                    drawn_at = time.monotonic()
                    partial = closed_lines(text)
                    try:
                        score = await asyncio.to_thread(score_html, partial)
                    except Exception:  # noqa: BLE001 - a half-written piece may not draw yet; keep the last
                        pass
                    doing = "Stopping…" if handle.cancelled else "Writing…"  # bars already queued still draw
                    yield (f"{doing} ({what}; {bars} bars so far).{note}"), skip, score, partial, skip, skip
        finally:
            if not handle.done:  # the page was closed or the run cancelled: free the row
                handle.cancel()
                record("cancelled")
        piece = handle.piece
        if handle.error:
            record("error")
            yield (f"⚠️ The engine failed: {handle.error}"), skip, skip, skip, skip, skip
            return
        # As the API counts its pieces: Stop, like a client that leaves, is "cancelled".
        outcome = "complete" if piece.complete else "cancelled" if piece.stop_reason == "cancelled" else "stopped"
        record(outcome, None if outcome == "cancelled" else time.perf_counter() - submitted)
        abc = piece_abc(prompt, config, piece, pool.made_by)
        abc = continuation.mark(abc) if continuation else abc
        # Converting a long piece takes seconds: say so, rather than leave the last "Writing…" up.
        ended = "Stopped" if piece.stop_reason == "cancelled" else "Written"
        yield (f"{ended} ({what}; {bars} lines); making the MusicXML, MIDI and score…"), skip, skip, abc, skip, skip
        made, errors, final_score = await asyncio.to_thread(finished_files, abc, _stem(prompt, config.seed, continuation))
        urls = files.store(made)
        how = {"eos": "finished", "cancelled": "stopped"}.get(piece.stop_reason, f"cut short ({piece.stop_reason})")
        lines = sum(line.startswith("[V:") for line in abc.splitlines())
        note += f" Not made: {'; '.join(f'{k}: {v}' for k, v in errors.items())}." if errors else ""
        yield ((f"Done: {lines} bars, {how}, seed {config.seed}, {piece.seconds:.1f} s.{note}"), skip,
               final_score or score, abc, player_html(urls), downloads_html(urls))

    def stop(state) -> str:
        handle = state.get("handle")
        if handle is not None and not handle.done:
            handle.cancel()  # the engine ends the piece at its next step; generate shows what was written
            return ("Stopping…")
        return ("Nothing is being written.")

    with gr.Blocks(title="NotaGen: sheet music", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown("# NotaGen\nSheet music in ABC notation from a period, a composer and an instrumentation, "
                    "drawn as it is written. Continue your own piece by giving its file.")
        state = gr.State({})
        with gr.Row():
            period = gr.Dropdown(periods(), value=DEFAULT_PROMPT[0], label="Period", elem_id="period")
            composer = gr.Dropdown(composers(DEFAULT_PROMPT[0]), value=DEFAULT_PROMPT[1], label="Composer",
                                   elem_id="composer")
            instrumentation = gr.Dropdown(instrumentations(*DEFAULT_PROMPT[:2]), value=DEFAULT_PROMPT[2],
                                          label="Instrumentation", elem_id="instrumentation")
        with gr.Row():
            random_seed = gr.Checkbox(True, label="New random seed each time", elem_id="random-seed")
            # No minimum here: Gradio's own refusal is a pop-up and a server traceback; request_for says it in a line.
            seed = gr.Number(None, precision=0, label="Seed (the one used is shown)", elem_id="seed")
            length = gr.Slider(0, 64, value=0, step=1, label="Length in bars (0: the model's choice; with a file: bars to add)",
                               elem_id="length")
            meter = gr.Dropdown(METERS, value=ANY, allow_custom_value=True, label="Meter", elem_id="meter")
            key = gr.Dropdown(KEYS, value=ANY, allow_custom_value=True, label="Key", elem_id="key")
        with gr.Accordion("Advanced", open=False):
            with gr.Row():
                temperature = gr.Slider(0.1, 2.0, value=PUBLISHED.temperature, step=0.05, label="Temperature",
                                        elem_id="temperature")
                top_k = gr.Slider(0, 128, value=PUBLISHED.top_k, step=1, label="Top-k (0: off)", elem_id="top-k")
                top_p = gr.Slider(0.05, 1.0, value=PUBLISHED.top_p, step=0.05, label="Top-p", elem_id="top-p")
        upload = gr.File(label="Continue a piece: .abc, .musicxml, .mxl or .mid (optional)", file_types=UPLOAD_TYPES,
                         type="filepath", elem_id="upload", height=120)
        with gr.Row():
            go = gr.Button("Generate", variant="primary", elem_id="generate")
            halt = gr.Button("Stop", variant="stop", elem_id="stop")
        status = gr.Markdown("", elem_id="status")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                score = gr.HTML("", elem_id="score", min_height=200, max_height=1000, padding=True)
            with gr.Column(scale=2):
                abc = gr.Code("", label="ABC", elem_id="abc", lines=24, max_lines=48, interactive=False,
                              wrap_lines=True)
        player = gr.HTML("", elem_id="player", padding=True)
        downloads = gr.HTML("", elem_id="downloads", padding=True)

        period.change(lambda p: gr.Dropdown(choices=composers(p), value=(composers(p) or [None])[0]), period, composer,
                      queue=False)
        composer.change(lambda p, c: gr.Dropdown(choices=instrumentations(p, c), value=(instrumentations(p, c) or
                                                                                           [None])[0]),
                        [period, composer], instrumentation, queue=False)
        # Generate is off while its piece is written (a second press was ignored without a word); Stop ends it.
        go.click(lambda: gr.Button(interactive=False), None, go, queue=False).then(
            generate, [period, composer, instrumentation, random_seed, seed, length, meter, key, temperature,
                       top_k, top_p, upload, state], [status, seed, score, abc, player, downloads],
            concurrency_limit=None, show_progress="hidden").then(lambda: gr.Button(interactive=True), None, go,
                                                                 queue=False)
        halt.click(stop, state, status, queue=False)
        # A seed typed in is the one wanted; in the browser, before a click on Generate can read the box.
        seed.input(None, None, random_seed, js="() => false", queue=False)
    return page


def mount_ui(app, pool: EnginePool, *, max_patches: int | None = None, path: str = "/", demo: bool = False):
    """The page on ``app`` (the service's FastAPI app) at ``path``, and its files' route
    (``demo``: the pool runs the demo model)."""
    import gradio as gr
    from fastapi.responses import FileResponse, JSONResponse

    files = PieceFiles()

    @app.get(f"{files.prefix}/{{token}}/{{name}}", include_in_schema=False)
    async def piece_file(token: str, name: str):
        found = files.path(token, name)
        if found is None:
            return JSONResponse({"error": "no such file: it was never made, or is older than an hour"}, 404)
        return FileResponse(found, media_type=MEDIA_TYPES.get(found.suffix, "application/octet-stream"),
                            filename=found.name)

    page = build_page(pool, files, max_patches, demo, getattr(app.state, "metrics", None))
    mounted = gr.mount_gradio_app(app, page, path=path, css=CSS, js=JS, ssr_mode=False, footer_links=["api"],
                                  max_file_size=MAX_BYTES, show_error=False)
    # Gradio's queue polls for work every millisecond while idle (about 6% of a core on an
    # appliance doing nothing); every 20 ms is still quicker than a person clicks.
    queue = getattr(page, "_queue", None)
    if queue is not None and hasattr(queue, "sleep_when_free"):
        queue.sleep_when_free = IDLE_POLL_SECONDS
        queue.progress_update_sleep_when_free = max(IDLE_POLL_SECONDS, queue.progress_update_sleep_when_free)
    return mounted
