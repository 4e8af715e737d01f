"""`notagen-trt ui`: the page (Gradio) and the API in one process over the demo model on ONNX
Runtime's CPU backend, on a loopback port. The browser test drives Debian's chromium through
Playwright: a piece from the menus and a seed, its score, player and downloads, a second person
at the same time, and a bad upload. With NOTAGEN_UI_SCREENSHOTS=DIR it saves the page before and
after generating (docs/ui-before.png, docs/ui-after.png come from there)."""

import base64
import contextlib
import io
import os
import shutil
import time
import wave
from pathlib import Path

import pytest
from conftest import BACH, LoopbackServer

pytest.importorskip("gradio")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from notagen_trt.commands.ui import UPLOAD_BODY  # noqa: E402
from notagen_trt.corpus import default_split  # noqa: E402
from notagen_trt.errors import NotaGenError  # noqa: E402
from notagen_trt.runtime.continuation import MARKER  # noqa: E402
from notagen_trt.runtime.engine import PieceRequest  # noqa: E402
from notagen_trt.runtime.piece import GenerationConfig  # noqa: E402
from notagen_trt.serve.app import create_app  # noqa: E402
from notagen_trt.serve.settings import ServeSettings, load_pool  # noqa: E402
from notagen_trt.serve.ui import PieceFiles, chosen_prompt, composers, instrumentations, mount_ui, periods  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
MAX_PATCHES = 300  # keeps each piece to seconds on 2 CPU cores
CHORALE = default_split("heldout") / "bach-bwv102.7.abc"


class UiServer(LoopbackServer):
    """The page and the API on a thread, on a free 127.0.0.1 port."""

    def __init__(self) -> None:
        self.pool = load_pool(ServeSettings(backend="ort-cpu", rows=2, threads=1, max_patches=MAX_PATCHES))
        super().__init__(mount_ui(create_app(self.pool, max_body=UPLOAD_BODY, max_patches=MAX_PATCHES), self.pool,
                                  max_patches=MAX_PATCHES, demo=True), start_seconds=60)

    def stop(self) -> None:
        self.stop_server()
        self.pool.close()


@pytest.fixture(scope="module")
def server():
    s = UiServer()
    yield s
    s.stop()


# ---- without a browser ---------------------------------------------------------------------------------
def test_an_idle_page_leaves_the_cpu_alone(server):
    """Gradio's queue polled for work every millisecond (about 6% of a core with nobody on the
    page); now every IDLE_POLL_SECONDS. This process holds the server, so its CPU time is the page's."""
    import time

    time.sleep(1)  # whatever the start-up left running
    start = time.process_time()
    time.sleep(4)
    used = time.process_time() - start
    assert used < 0.03 * 4, used  # under 3% of a core (measured: 1.0-1.4% now, 4.5% before)


def test_menus_offer_only_valid_combinations():
    from notagen_trt.runtime.prompts import valid_prompts

    offered = {(p, c, i) for p in periods() for c in composers(p) for i in instrumentations(p, c)}
    assert offered == {(v.period, v.composer, v.instrumentation) for v in valid_prompts()}
    assert "Keyboard" in instrumentations("Romantic", "Chopin, Frederic")
    with pytest.raises(NotaGenError, match="not a combination the model knows; pick again"):
        chosen_prompt("Baroque", "Chopin, Frederic", "Keyboard")


def test_the_key_menu_offers_every_signature_each_way_and_reads_them_all():
    """Majors to six sharps and six flats, minors to five and six (Ab and Db were missing), each
    one a key the forced-key rule reads, each signature once."""
    from notagen_trt.runtime.piece import key_signature, normalize_key
    from notagen_trt.serve.ui import ANY, KEYS

    keys = [k for k in KEYS if k != ANY]
    signatures = {k: key_signature(normalize_key(k)) for k in keys}
    majors = [k for k in keys if len(k) <= 2 and not k.endswith("m")]
    minors = [k for k in keys if k.endswith("m")]
    assert len({signatures[k] for k in majors}) == len(majors) == 13  # C, six sharps, six flats
    assert len({signatures[k] for k in minors}) == len(minors) == 12
    assert signatures["Ab"] == signatures["Fm"] and signatures["Db"] == signatures["Bbm"]


def test_the_page_says_what_the_demo_model_did_not_learn():
    """As `generate` does: a prompt of few training pieces, or fewer bars than its shortest piece;
    nothing for a common prompt, or for a continued file (its own bars are the context)."""
    from notagen_trt.runtime.prompts import resolve_prompt
    from notagen_trt.serve.ui import demo_notes

    def note(prompt, bars=None, text=None):
        return demo_notes(PieceRequest(prompt, GenerationConfig(bars=bars), text=text), prompt)

    chopin, bach = resolve_prompt("Romantic", "Chopin, Frederic", "Keyboard"), resolve_prompt(*BACH)
    assert "Note: the demo model saw this prompt in 1 training piece (" in note(chopin) and "Stop ends one" in note(chopin)
    assert note(bach) == "" and note(None) == "" and note(bach, bars=7) == ""
    assert "shortest training pieces have 8 bars" in note(bach, bars=1)
    assert note(chopin, bars=1, text="X:1\n") == ""


def test_piece_files_are_served_only_by_their_token():
    files = PieceFiles()
    try:
        urls = files.store({"a.abc": "X:1\n", "a.mid": b"MThd"})
        token = urls["a.abc"].split("/")[-2]
        assert files.path(token, "a.abc").read_text() == "X:1\n"
        assert files.path(token, "../a.abc") is None and files.path("x" * 16, "a.abc") is None
        assert files.path(token, "b.abc") is None
    finally:
        files.close()
    assert not files.root.exists()


def test_midi_plays_to_a_wav():
    import music21

    from notagen_trt.serve.audio import midi_to_wav

    score = music21.converter.parse("tinyNotation: 4/4 c4 d e f g1")
    wav = wave.open(io.BytesIO(midi_to_wav(music21.midi.translate.streamToMidiFile(score).writestr())))
    seconds = wav.getnframes() / wav.getframerate()
    assert 4 < seconds < 10 and wav.getnchannels() == 1


def test_api_takes_meter_key_and_a_file_to_continue(server):
    body = {"period": "Baroque", "composer": "Bach, Johann Sebastian", "instrumentation": "Choral", "seed": 2,
            "meter": "3/4", "key": "Dm", "max_patches": 120}
    reply = httpx.post(f"{server.url}/v1/pieces", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    abc = reply.json()["outputs"]["abc"]
    assert "\nM:3/4\n" in abc and "\nK:Dmin\n" in abc
    upload = {"name": "chorale.abc", "data": base64.b64encode(CHORALE.read_bytes()).decode()}
    reply = httpx.post(f"{server.url}/v1/pieces", json={"seed": 1, "continuation": upload, "max_patches": 150},
                       timeout=120)
    assert reply.status_code == 200, reply.text
    assert f"{MARKER}, after bar 15 of chorale.abc" in reply.json()["outputs"]["abc"]
    for bad, says in (({"meter": "3/5"}, "meter must look like"),
                      ({"continuation": {"name": "x.mid", "data": base64.b64encode(b"junk").decode()}},
                       "x.mid: not a standard MIDI file"),
                      ({"continuation": {"name": "x.mid", "data": "%%%"}}, "continuation.data: not base64"),
                      ({"continuation": {"name": "x.mid", "data": "\u00e9"}}, "continuation.data: not base64"),
                      ({"continuation": upload, "key": "D"}, "a continued piece keeps its file's")):
        reply = httpx.post(f"{server.url}/v1/pieces", json={"seed": 1, **bad}, timeout=60)
        assert reply.status_code == 422 and says in reply.json()["error"], reply.text


# ---- in a browser ----------------------------------------------------------------------------------------
def _browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (the browser test uses Debian's chromium)")
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the browser test drives "
                                                                   "Debian's chromium with it)")
    return playwright.sync_playwright


def _choose(page, elem: str, value: str) -> None:
    page.click(f"#{elem} input")
    page.fill(f"#{elem} input", value)
    page.click(f"ul[role=listbox] li:has-text('{value}')")
    page.wait_for_function(f"document.querySelector('#{elem} input').value === {value!r}")


def _generate(page, period: str, composer: str, instrumentation: str, seed: int) -> None:
    _choose(page, "period", period)
    _choose(page, "composer", composer)
    _choose(page, "instrumentation", instrumentation)
    page.uncheck("#random-seed input")
    page.fill("#seed input", str(seed))
    page.click("#generate")


def _wait_status(page, text: str, seconds: float = 240) -> str:
    page.wait_for_function(f"document.querySelector('#status').innerText.includes({text!r})", timeout=seconds * 1000)
    return page.inner_text("#status")


def _page_pieces(server) -> dict[str, float]:
    """The page's pieces in the service's metrics, by outcome."""
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    prefix = 'notagen_requests_total{endpoint="page",outcome="'
    return {line[len(prefix):].split('"')[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(prefix)}


def _audio_seconds(page) -> float:
    return page.evaluate("""async () => {
        const a = document.querySelector('#player audio');
        if (!(a.duration > 0)) await new Promise(done => { a.addEventListener('loadedmetadata', done, {once: true});
                                                         a.load(); });
        return a.duration; }""")


@pytest.mark.browser
def test_the_page_writes_draws_plays_and_downloads_a_piece(server, tmp_path):
    import music21

    from notagen_trt.runtime.abcio import to_musicxml

    shots = os.environ.get("NOTAGEN_UI_SCREENSHOTS")
    with _browser()() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server.url, timeout=60_000)
            page.wait_for_selector("#generate")
            # A screen reader hears the status line: a live region (it was a silent block).
            page.wait_for_function("document.querySelector('#status').getAttribute('aria-live') === 'polite'",
                                   timeout=10_000)
            assert page.get_attribute("#status", "role") == "status"
            if shots:
                page.screenshot(path=str(Path(shots) / "ui-before.png"), full_page=True)

            # A second person, in their own browser context, generating at the same time.
            other = browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
            other.goto(server.url, timeout=60_000)
            other.wait_for_selector("#generate")
            other.evaluate("""() => { window.seen = [];
                new MutationObserver(() => window.seen.push(document.querySelector('#status').innerText))
                    .observe(document.querySelector('#status'), {subtree: true, childList: true, characterData: true}); }""")
            _generate(other, "Romantic", "Chopin, Frederic", "Keyboard", 3)
            assert page.is_checked("#random-seed input")
            page.fill("#seed input", "5")  # a seed typed in is the one wanted: no longer a random one
            page.wait_for_function("!document.querySelector('#random-seed input').checked", timeout=10_000)
            _generate(page, "Romantic", "Chopin, Frederic", "Keyboard", 0)
            # Off while the piece is written: a second press would be ignored without a word.
            page.wait_for_function("document.querySelector('#generate').disabled", timeout=10_000)

            status = _wait_status(page, "Done:")
            assert "seed 0" in status and page.input_value("#seed input") == "0"
            page.wait_for_function("!document.querySelector('#generate').disabled", timeout=10_000)  # on again
            assert "Note: the demo model saw this prompt in 1 training piece" in status  # as generate says
            counted = _page_pieces(server)  # beside the API's, in /metrics
            assert counted.get("complete", 0) + counted.get("stopped", 0) >= 1, counted
            assert page.eval_on_selector_all("#score svg g.measure", "els => els.length") >= 4, status
            assert _audio_seconds(page) > 1
            assert page.get_attribute("#player-audio", "aria-label") == "The piece, played"
            assert page.get_attribute("#score .page", "aria-label").startswith("Score, page 1 of")
            if shots:
                page.screenshot(path=str(Path(shots) / "ui-after.png"), full_page=True)
            links = page.eval_on_selector_all("#downloads a", "els => els.map(a => [a.dataset.kind, a.href])")
            assert sorted(kind for kind, _ in links) == ["abc", "mid", "musicxml", "svg", "wav"], status
            for kind, url in links:
                reply = page.request.get(url)
                assert reply.ok, (kind, reply.status)
                path = tmp_path / f"piece.{kind}"
                path.write_bytes(reply.body())
                if kind == "abc":
                    assert to_musicxml(path.read_text())  # abctoolkit's abc2xml reads it
                elif kind in ("musicxml", "mid"):
                    assert music21.converter.parse(path).flatten().notes
                elif kind == "svg":
                    assert b"<svg" in path.read_bytes()[:400]
                else:
                    assert wave.open(str(path)).getnframes() > 0

            assert "seed 3" in _wait_status(other, "Done:")  # the second person's piece finished too
            assert any("bars so far" in s for s in other.evaluate("window.seen"))  # drawn as bars arrived

            # A bad upload is a sentence on the page, and the page keeps working.
            page.set_input_files("#upload input[type=file]",
                                 files=[{"name": "noise.mid", "mimeType": "audio/midi", "buffer": bytes(range(256))}])
            page.click("#generate")
            assert "noise.mid: not a standard MIDI file" in _wait_status(page, "⚠️", 60)
            assert "Traceback" not in page.content()
            page.click("#upload button[aria-label='Clear']")
            page.click("#generate")
            _wait_status(page, "Done:")
        finally:
            browser.close()


@contextlib.contextmanager
def _page(server):
    """A fresh headless chromium page on the served UI, closed afterwards."""
    with _browser()() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            page.goto(server.url, timeout=60_000)
            page.wait_for_selector("#generate")
            yield page
        finally:
            browser.close()


@pytest.mark.browser
def test_the_page_continues_an_uploaded_file(server, tmp_path):
    upload = tmp_path / "chorale.abc"
    shutil.copy(CHORALE, upload)
    with _page(server) as page:
        page.set_input_files("#upload input[type=file]", str(upload))
        page.click("#generate")
        _wait_status(page, "Done:")
        abc = page.inner_text("#abc")
        assert MARKER in abc and "after bar 15 of chorale.abc" in abc


@pytest.mark.browser
def test_a_seed_out_of_range_is_a_line_on_the_page(server):
    with _page(server) as page:
        page.fill("#seed input", "-5")  # typed: no longer a random seed
        page.wait_for_function("!document.querySelector('#random-seed input').checked", timeout=10_000)
        page.click("#generate")
        status = _wait_status(page, "⚠️", 60)
        assert "seed must be in [0, 2**63), got -5" in status, status


@pytest.mark.browser
def test_stop_ends_the_piece_and_keeps_what_was_written(server):
    # Patches 20 ms apart: on a fast CPU the whole piece took 0.5 s, ending before Stop arrived.
    slow = lambda seconds, rows, lane_rows: time.sleep(0.02)  # noqa: E731
    for engine in server.pool.engines:
        engine.on_step.append(slow)
    try:
        _stop_ends_the_piece(server)
    finally:
        for engine in server.pool.engines:
            engine.on_step.remove(slow)


def _stop_ends_the_piece(server):
    with _page(server) as page:
        page.fill("#length input[type=number]", "64")
        _generate(page, "Romantic", "Chopin, Frederic", "Keyboard", 4)
        _wait_status(page, "bars so far", 120)
        page.evaluate("""() => { window.seen = [];
            new MutationObserver(() => window.seen.push(document.querySelector('#status').innerText))
                .observe(document.querySelector('#status'), {subtree: true, childList: true, characterData: true}); }""")
        cancelled = _page_pieces(server).get("cancelled", 0)
        page.click("#stop")
        status = _wait_status(page, "Done:", 60)
        assert "stopped" in status and "[V:1]" in page.inner_text("#abc")
        assert _page_pieces(server)["cancelled"] == cancelled + 1  # counted as the API counts a client leaving
        # Once stopping, the page never says it is writing again (bars already made still draw).
        seen = page.evaluate("window.seen")
        after = seen[next(i for i, s in enumerate(seen) if s.startswith("Stopp")):]
        assert after and not [s for s in after if "Writing" in s], seen
