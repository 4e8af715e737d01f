"""A piece's MIDI played offline into a WAV file, for the page's player: TinySoundFont with the
General MIDI SoundFont that pretty-midi ships (TimGM6mb.sf2), so nothing is downloaded at run time
and no sound device is needed. Needs the ``ui`` extra (tinysoundfont, pretty-midi)."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np

from notagen_trt.errors import NotaGenError

SAMPLE_RATE = 22_050  # a score preview: half CD rate keeps a two-minute piece near 5 MB of mono WAV
MAX_SECONDS = 15 * 60  # a generated piece runs minutes; a runaway tempo map must not fill the disk
TAIL_SECONDS = 1.5  # let the last notes ring out


def soundfont() -> Path:
    """The General MIDI SoundFont inside the pretty-midi package."""
    try:
        import pretty_midi
    except ImportError:
        raise NotaGenError("the player needs pretty-midi's SoundFont: pip install 'notagen-trt[ui]'") from None
    path = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"
    if not path.is_file():
        raise NotaGenError(f"{path}: pretty-midi's SoundFont is missing; reinstall pretty-midi")
    return path


def midi_to_wav(midi: bytes, sample_rate: int = SAMPLE_RATE) -> bytes:
    """The MIDI file rendered to a mono 16-bit WAV file's bytes."""
    try:
        import tinysoundfont
        from tinysoundfont.midi import load_memory
    except ImportError:
        raise NotaGenError("the player needs tinysoundfont: pip install --no-deps tinysoundfont (its pyaudio "
                           "is for live playback, which this does not use)") from None
    synth = tinysoundfont.Synth(gain=-3, samplerate=sample_rate)
    sfid = synth.sfload(str(soundfont()))
    for channel in range(16):  # every channel has an instrument before the file's program changes
        synth.program_select(channel, sfid, 128 if channel == 9 else 0, 0, is_drums=channel == 9)
    sequencer = tinysoundfont.Sequencer(synth)
    events = load_memory(midi, persistent=False)
    sequencer.add(events)
    end = min(MAX_SECONDS, (events[-1].t if events else 0.0) + TAIL_SECONDS)
    frames = int(end * sample_rate)
    stereo = np.frombuffer(synth.generate(frames), dtype=np.float32).reshape(-1, 2)
    mono = stereo.mean(axis=1)
    peak = float(np.abs(mono).max()) if mono.size else 0.0
    mono = np.clip(mono * (0.8 / peak if peak > 0 else 1.0), -1.0, 1.0)  # as loud as the page's other players
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes((mono * 32767).astype("<i2").tobytes())
    return out.getvalue()
