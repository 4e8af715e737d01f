"""Prompt adherence of a model (default: the demo model): does the instrumentation line change
what it writes?

For the 20 most common prompts of the corpus's train split (most pieces first; prompts with no
training piece follow in prompts.txt order), generate a few pieces per prompt on ONNX Runtime CPU
and compare their parts with the training pieces of the same prompt, or of the same
instrumentation where the prompt has none. A piece's parts are the distinct part names on its
`V:` lines (xml2abc names a part once, on its first voice: a piano's two staves are one part), or
its number of voices where none is named. A piece adheres when it has the training pieces' most
common number of parts and at least half of its part names (some, where those are named) occur
in those training pieces.

    python benchmarks/prompt_adherence.py [--model DIR] [--seeds 3] [--max-patches 96] [--json PATH]

The header (and with it every `V:` line) comes before the first bar, so pieces are cut at 96
patches by default; a piece still writing its header by then (some loop on header lines) shows
as "?" and counts as not adhering.

Prints a Markdown table (the one in calibration_data/README.md).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

from notagen_trt.corpus import default_split, read_pieces
from notagen_trt.runtime.engine import PieceRequest, load_engine
from notagen_trt.runtime.piece import GenerationConfig
from notagen_trt.runtime.postprocess import clean_part_name
from notagen_trt.runtime.prompts import Prompt, valid_prompts

_NAME = re.compile(r'\bnm="([^"]*)"')


def parts(text: str) -> tuple[int, tuple[str, ...]]:
    """(number of parts, their names) from a piece's header `V:` lines."""
    voices = [line for line in text.splitlines() if line.startswith("V:")]
    names = []
    for line in voices:
        match = _NAME.search(line)
        name = clean_part_name(match.group(1)) if match else ""
        if name and name not in names:
            names.append(name)
    return (len(names) if names else max(1, len(voices))), tuple(names)


def prompt_of(text: str) -> Prompt | None:
    lines = text.splitlines()[:3]
    if len(lines) == 3 and all(line.startswith("%") and not line.startswith("%%") for line in lines):
        return Prompt(*(line[1:] for line in lines))
    return None


Parts = tuple[int, tuple[str, ...]]


def training_parts() -> dict[Prompt, list[Parts]]:
    """The parts of the train split's pieces, per prompt."""
    found: dict[Prompt, list[Parts]] = {}
    for _, text in read_pieces(default_split("train")):
        prompt = prompt_of(text)
        if prompt is not None:
            found.setdefault(prompt, []).append(parts(text))
    return found


def chosen_prompts(train: dict[Prompt, list[Parts]], count: int) -> list[Prompt]:
    order = {p: i for i, p in enumerate(valid_prompts())}
    return sorted(valid_prompts(), key=lambda p: (-len(train.get(p, [])), order[p]))[:count]


def reference(prompt: Prompt, train: dict[Prompt, list[Parts]]) -> tuple[list[Parts], str]:
    """The training pieces' parts a prompt is judged against, and where they come from."""
    if train.get(prompt):
        return train[prompt], "this prompt"
    same = [x for p, found in train.items() if p.instrumentation == prompt.instrumentation for x in found]
    return same, (f"{prompt.instrumentation}, any composer" if same else "no training piece")


def adheres(got: Parts | None, ref: list[Parts]) -> bool:
    if got is None:
        return False
    mode = Counter(n for n, _ in ref).most_common(1)[0][0]
    known = {name for _, names in ref for name in names}
    if known and not got[1]:  # an unnamed single line where the training pieces name their parts
        return False
    return got[0] == mode and sum(name in known for name in got[1]) * 2 >= len(got[1])


def measure(model: str | None, prompts: list[Prompt], seeds: int, max_patches: int) -> list[dict]:
    engine = load_engine(model, "ort-cpu")
    requests = [PieceRequest(p, GenerationConfig(seed=s, max_patches=max_patches)) for p in prompts for s in range(seeds)]
    with engine:
        pieces = engine.generate(requests)
    rows = []
    for i, prompt in enumerate(prompts):
        got = [parts(p.text) if "[V:" in p.text else None for p in pieces[i * seeds:(i + 1) * seeds]]
        rows.append({"prompt": prompt, "generated": got})
    return rows


def _range(ref: list[Parts]) -> str:
    counts = [n for n, _ in ref]
    if not counts:
        return "—"
    common = Counter(counts).most_common(1)[0][0]
    return f"{common} ({min(counts)}-{max(counts)})" if min(counts) != max(counts) else str(common)


def _names(found) -> str:
    return ", ".join(n for n, _ in Counter(name for x in found if x for name in x[1]).most_common(4)) or "(unnamed)"


def table(rows: list[dict], train: dict[Prompt, list[Parts]]) -> tuple[str, list[dict]]:
    lines = ["| prompt | train pieces | parts in training: number (range), names; source | parts generated | "
             "part names generated (most common) | adheres |",
             "|---|---:|---|---|---|---|"]
    records = []
    for row in rows:
        prompt, got = row["prompt"], row["generated"]
        ref, source = reference(prompt, train)
        inside = sum(adheres(g, ref) for g in got) if ref else None
        training = f"{_range(ref)}, {_names(ref)}; {source}" if ref else source
        lines.append(f"| {prompt.period} / {prompt.composer} / {prompt.instrumentation} | {len(train.get(prompt, []))} "
                     f"| {training} | {', '.join(str(g[0]) if g else '?' for g in got)} | {_names(got)} "
                     f"| {'—' if inside is None else f'{inside}/{len(got)}'} |")
        records.append({"prompt": [prompt.period, prompt.composer, prompt.instrumentation],
                        "train_pieces": len(train.get(prompt, [])), "reference_parts": ref, "reference": source,
                        "generated_parts": [g and g[0] for g in got], "generated_names": [g and list(g[1]) for g in got],
                        "adheres": inside})
    return "\n".join(lines), records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model directory or checkpoint (default: the demo model)")
    parser.add_argument("--prompts", type=int, default=20, help="how many prompts (default 20)")
    parser.add_argument("--seeds", type=int, default=3, help="pieces per prompt, seeds 0..N-1 (default 3)")
    parser.add_argument("--max-patches", type=int, default=96, help="cap per piece (the header comes first)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    train = training_parts()
    start = time.perf_counter()
    rows = measure(args.model, chosen_prompts(train, args.prompts), args.seeds, args.max_patches)
    text, records = table(rows, train)
    print(text)
    print(f"\n{len(rows) * args.seeds} pieces in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(records, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
