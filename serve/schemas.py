"""The service's request and response bodies. Their bounds are the API's validation (a value out
of bounds is a 422 naming the field) and its OpenAPI documentation at once."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from notagen_trt.runtime.piece import MAX_SECONDS, GenerationConfig
from notagen_trt.runtime.sampling import TEMPERATURE_RANGE, TOP_K_MAX, SamplingParams

Format = Literal["abc", "musicxml", "midi", "svg"]
MAX_PATCHES = 100_000  # more than the published 102,400-character limit lets a piece reach
MAX_BARS = 10_000  # [r:0/N] must leave room in its 16-character patch
MAX_SEED = 2**63  # numpy's seed range as GenerationConfig takes it
PUBLISHED = SamplingParams()  # the published sampling settings: the defaults here too


class ErrorOut(BaseModel):
    error: str = Field(description="What was wrong, in one line")


class PromptOut(BaseModel):
    period: str
    composer: str
    instrumentation: str


class PromptsOut(BaseModel):
    prompts: list[PromptOut] = Field(description="Every period / composer / instrumentation the model was tuned on")


class FileIn(BaseModel):
    """A user's score to continue, as a file: its name (the suffix says the format) and bytes."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=200, examples=["chorale.mid"],
                      description=".abc, .musicxml, .xml, .mxl, .mid or .midi (the server's --max-body bounds the size)")
    data: str = Field(description="The file's bytes, base64")


class PieceIn(BaseModel):
    """A piece to generate: all three of period, composer and instrumentation, or none of them
    (unconditional). The same seed and settings give the piece `notagen-trt generate` writes."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"period": "Baroque", "composer": "Bach, Johann Sebastian", "instrumentation": "Choral", "seed": 3}]})

    period: str | None = Field(None, max_length=100, examples=["Baroque"])
    composer: str | None = Field(None, max_length=100, examples=["Bach, Johann Sebastian"])
    instrumentation: str | None = Field(None, max_length=100, examples=["Choral"])
    # Whole numbers are strict: true, "5" and 5.0 are refused rather than read as 1 and 5.
    seed: int | None = Field(None, ge=0, lt=MAX_SEED, strict=True,
                             description="Random when absent; the response says which")
    bars: int | None = Field(None, ge=0, le=MAX_BARS, strict=True,
                             description="Force the length: N more bar lines ([r:0/N])")
    max_patches: int | None = Field(None, ge=1, le=MAX_PATCHES, strict=True,
                                    description="Stop the piece after this many patches")
    max_seconds: float = Field(MAX_SECONDS, gt=0, le=MAX_SECONDS,
                               description="Stop the piece after this long, counted from when it takes a row "
                                           "(time waiting in the queue is not counted)")
    top_k: int = Field(PUBLISHED.top_k, ge=0, le=TOP_K_MAX, strict=True,
                       description="Keep the k most likely characters (0: off)")
    top_p: float = Field(PUBLISHED.top_p, gt=0, le=1, description="Nucleus mass")
    temperature: float = Field(PUBLISHED.temperature, ge=TEMPERATURE_RANGE[0], le=TEMPERATURE_RANGE[1],
                               description="Sampling temperature")
    outputs: list[Format] = Field(["abc"], min_length=1, max_length=4,
                                  description="What to return: the ABC and any of its MusicXML, MIDI and SVG")
    meter: str | None = Field(None, max_length=10, examples=["3/4"], description="Force the meter (M:) and bars of it")
    key: str | None = Field(None, max_length=20, examples=["F#m"],
                            description="Force the key (K:): D, Dm, Bb, F#m, or a mode such as Ddor")
    continuation: FileIn | None = Field(None, description="Continue this piece: the answer is its bars, a comment "
                                                          "line, then bars more (`bars`: how many, default 16)")


def generation_config(body: PieceIn, seed: int, cap: int | None = None) -> GenerationConfig:
    """The piece a request asks for (``cap``: the server's --max-patches, when the request sets
    none); ValueError, one line, for a meter or key it cannot read."""
    return GenerationConfig(seed=seed, sampling=SamplingParams(body.top_k, body.top_p, body.temperature),
                            max_patches=body.max_patches or cap, max_seconds=body.max_seconds, bars=body.bars,
                            meter=body.meter, key=body.key)


def piece_request_model(cap: int | None) -> type[PieceIn]:
    """PieceIn, or PieceIn whose max_patches is capped by the server (``serve --max-patches``)."""
    if cap is None:
        return PieceIn

    class CappedPieceIn(PieceIn):
        model_config = ConfigDict(title="PieceIn")
        max_patches: int | None = Field(None, ge=1, le=cap, strict=True,
                                        description=f"Stop the piece after this many patches "
                                                    f"(at most and by default {cap} here)")

    return CappedPieceIn


class Outputs(BaseModel):
    abc: str | None = Field(None, description="The tune, exactly as `notagen-trt generate` writes its .abc")
    musicxml: str | None = None
    midi: str | None = Field(None, description="A standard MIDI file, base64")
    svg: str | None = Field(None, description="The score, every page")


class PieceOut(BaseModel):
    seed: int
    prompt: PromptOut | None
    outputs: Outputs = Field(description="The formats asked for; one whose conversion failed is null")
    errors: dict[str, str] = Field(description="Why a format asked for could not be made")
    complete: bool = Field(description="The model ended the piece (stop_reason eos)")
    stop_reason: str = Field(description="eos, or the limit that ended it: max_patches, max_seconds, max_chars, "
                                         "context_full")
    patches: int
    seconds: float
    backend: str


class BarOut(BaseModel):
    index: int = Field(description="0 for the first closed bar of the piece")
    text: str = Field(description="A header line or one voice's bar as the model wrote it (training format)")


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    backend: str
    engines: int
    rows: int
    active: int = Field(description="Rows generating a piece now")
    waiting: int = Field(description="Pieces waiting for a row")
