"""`notagen-trt prompts`: the valid period / composer / instrumentation combinations."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def _cmd_prompts(args: argparse.Namespace) -> int:
    from notagen_trt.runtime.prompts import valid_prompts

    prompts = valid_prompts()
    if args.json:
        print(json.dumps([p.as_dict() for p in prompts], indent=1))
        return 0
    print(table(prompts))
    return 0


def table(prompts) -> str:
    """One row per composer; the composer is quoted as it must be typed (the names hold commas,
    so a list of them would be ambiguous), instrumentations listed after it."""
    rows: dict[tuple[str, str], list[str]] = defaultdict(list)
    for p in prompts:
        rows[(p.period, p.composer)].append(p.instrumentation)
    cells = [(period, f'"{composer}"', ", ".join(sorted(kinds))) for (period, composer), kinds in rows.items()]
    header = ("--period", "--composer", "--instrumentation (one of)")
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(2)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in [header, *cells]]
    lines.append(f"\n{len(prompts)} combinations; case does not matter. Example: notagen-trt generate --period "
                 f'{prompts[0].period} --composer "{prompts[0].composer}" --instrumentation {prompts[0].instrumentation}')
    return "\n".join(lines)


def add_prompt_arguments(p: argparse.ArgumentParser) -> None:
    """--period / --composer / --instrumentation, as every command that writes pieces takes them."""
    p.add_argument("--period", help="the prompt's period, e.g. Baroque (all three or none; `notagen-trt prompts` "
                                    "lists the combinations)")
    p.add_argument("--composer", help='the prompt\'s composer, as listed, e.g. "Bach, Johann Sebastian"')
    p.add_argument("--instrumentation", help="the prompt's instrumentation, e.g. Choral, Keyboard, Chamber")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prompts", help="list the valid --period / --composer / --instrumentation combinations")
    p.add_argument("--json", action="store_true", help="print them as a JSON list")
    p.set_defaults(func=_cmd_prompts)
