"""Run a curation recipe headless: ``python -m training.core.curate``.

Reads documents from built-in corpora (``--corpus austen``) and/or JSONL files (``--input
docs.jsonl``, one ``{"id", "text", ...}`` per line), runs the recipe (``--recipe recipe.json``,
default :func:`default_recipe`) with a progress bar, and writes into ``--out``:
``documents.jsonl`` (kept documents), ``decisions.jsonl`` (every drop or change, the audit
trail) and ``report.json`` (per-step statistics and examples). Files are written to temporary
names and renamed at the end, so an interrupted run leaves no half-written output.

Example: ``python -m training.core.curate --corpus austen --corpus kjv --out var/curated --workers 2``
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from training.core import corpora
from training.core.config import ConfigError
from training.core.curate.base import Decision, Doc
from training.core.curate.pipeline import Pipeline, default_recipe


def iter_inputs(corpus_names: Sequence[str], paths: Sequence[str], cache_dir: str | None = None) -> Iterator[Doc]:
    """Documents of the named corpora, then of the JSONL files (ids prefixed when missing)."""
    for name in corpus_names:
        yield from corpora.iter_documents(name, cache_dir)
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError("input", f"{path}:{lineno}: not JSON ({e.msg})",
                                      "each line must be one JSON object with 'text'") from None
                if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
                    raise ConfigError("input", f"{path}:{lineno}: no 'text' string", "add a 'text' field")
                doc.setdefault("id", f"{Path(path).stem}/{lineno}")
                doc.setdefault("source", Path(path).stem)
                yield doc


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m training.core.curate", description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", action="append", default=[], choices=sorted(corpora.CORPORA),
                    help="built-in corpus (repeatable)")
    ap.add_argument("--input", action="append", default=[], help="JSONL file of documents (repeatable)")
    ap.add_argument("--recipe", help="JSON file: [{\"step\": name, \"config\": {...}}, ...]")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="stop after this many input documents")
    ap.add_argument("--max-examples", type=int, default=5)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if not args.corpus and not args.input:
        ap.error("give at least one --corpus or --input")
    recipe = json.loads(Path(args.recipe).read_text()) if args.recipe else default_recipe()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = {name: out / f".{name}.partial" for name in ("documents.jsonl", "decisions.jsonl", "report.json")}
    with tmp["decisions.jsonl"].open("w", encoding="utf-8") as dec_file, \
            tmp["documents.jsonl"].open("w", encoding="utf-8") as doc_file:

        def on_decisions(step: str, decisions: list[Decision], batch: list[Doc]) -> None:
            for d in decisions:
                dec_file.write(json.dumps(d.to_dict(), ensure_ascii=False) + "\n")

        pipe = Pipeline.from_recipe(recipe, max_examples=args.max_examples, on_decisions=on_decisions)
        docs = itertools.islice(iter_inputs(args.corpus, args.input, args.cache_dir), args.limit)
        bar = None
        if not args.no_progress:
            from tqdm import tqdm

            bar = tqdm(unit="doc", desc="curate", file=sys.stderr)
            pipe.on_batch = lambda p: (bar.update(p["docs_in"] - bar.n),
                                       bar.set_postfix(kept=p["docs_out"], refresh=False))
        for doc in pipe.run(docs, batch_size=args.batch_size, workers=args.workers):
            doc_file.write(json.dumps(doc, ensure_ascii=False) + "\n")
        if bar is not None:
            bar.close()
    report = pipe.report()
    tmp["report.json"].write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    for name, path in tmp.items():
        os.replace(path, out / name)
    print(f"kept {report['docs_out']} of {report['docs_in']} documents -> {out / 'documents.jsonl'}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
