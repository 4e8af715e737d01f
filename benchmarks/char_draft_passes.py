"""How many char-decoder passes a patch would take if each pass checked a drafted continuation
(prompt-lookup drafting), counted on real ABC: the held-out corpus in NotaGen's training format.

Today a patch takes 15 sequential char steps, each reading the char decoder's weights once (on a
CPU NotaGen-small's patch is bound by those reads). Sampling is a fixed function of the logits and
the row's uniforms, so a pass over a drafted continuation can check it exactly: the drafted ids
that equal what the pass samples at their places are kept, plus the first id that differs. The
draft here: the ids that followed, in the latest earlier patch of the piece, the last ``n`` ids
of the patch so far at the same places (no model involved).

``python benchmarks/char_draft_passes.py [--corpus calibration_data/heldout] [--ngrams 1,2,4,8]``"""

from __future__ import annotations

import argparse
import statistics

from notagen_trt.config import PATCH_SIZE
from notagen_trt.corpus import read_pieces
from notagen_trt.runtime import codec


def passes(history: list[list[int]], patch: list[int], ngram: int) -> int:
    """Passes to produce ``patch`` (16 ids; place 0 is the patch's own start, not sampled)."""
    done, count = 1, 0
    while done < PATCH_SIZE:
        count += 1
        key = patch[max(0, done - ngram):done]
        draft = next((old[done:] for old in reversed(history) if old[max(0, done - ngram):done] == key), [])
        kept = 0
        while kept < len(draft) and done + kept < PATCH_SIZE and draft[kept] == patch[done + kept]:
            kept += 1
        done += kept + 1  # the drafted ids that held, and the one the pass samples itself
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="calibration_data/heldout")
    parser.add_argument("--ngrams", default="1,2,4,8")
    args = parser.parse_args()
    pieces = [codec.encode_train(text).tolist() for _, text in read_pieces(args.corpus)]
    for ngram in map(int, args.ngrams.split(",")):
        counts = [passes(piece[:i], patch, ngram) for piece in pieces for i, patch in enumerate(piece)]
        print(f"last {ngram} id(s) as the key: {len(pieces)} pieces, {len(counts)} patches, "
              f"{statistics.mean(counts):.2f} passes a patch on average (median {statistics.median(counts)}; "
              f"{PATCH_SIZE - 1} without drafts)")


if __name__ == "__main__":
    main()
