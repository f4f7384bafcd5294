"""Run a curation recipe headless into a dataset version: ``python -m training.core.curate``.

Inputs are built-in corpora (``--corpus austen``), document JSONL files (``--input docs.jsonl``,
one ``{"id", "text", ...}`` per line) and any other importable file (``--input notes.zip``:
``.txt .md .html .json .csv .parquet .zip .tar.gz``, imported first with
:func:`training.core.curate.sources.import_file`). The recipe (``--recipe recipe.json``, default
:func:`default_recipe`) runs through :func:`training.core.curate.runner.run_recipe` with a
progress bar (documents/s, MB/s, ETA, kept, shards) into the version folder ``--out``
(``manifest.json``, ``report.json``, ``datasheet.md``, ``data/``, ``decisions/``). An interrupted
run (Ctrl-C, a crash) resumes when the same command is run again.

Example: ``python -m training.core.curate --corpus austen --corpus kjv --out var/datasets/books-v1 --workers 2``
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.core import corpora
from training.core.config import ConfigError
from training.core.curate.base import CurationError
from training.core.curate.pipeline import default_recipe
from training.core.curate.runner import OUTPUT_FORMATS, run_recipe, work_dir_for
from training.core.curate.sources import file_format, import_file, sha256_file


def prepare_inputs(corpus_names: Sequence[str], paths: Sequence[str], out: Path,
                   cache_dir: str | None = None) -> list[str]:
    """Document JSONL files for the runner: the corpora's cached files, ``.jsonl`` inputs as they
    are, and every other file imported once into ``.<out>.sources/`` (keyed by its sha256, so a
    resumed run finds the same inputs)."""
    inputs = [str(corpora.fetch(name, cache_dir)) for name in corpus_names]
    sources = out.parent / f".{out.name}.sources"
    for p in paths:
        path = Path(p)
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            inputs.append(str(path))
            continue
        if file_format(path.name) is None:
            raise CurationError("unsupported_format", f"{p}: unsupported file type",
                                "give document JSONL files or .txt .md .html .json .csv .parquet .zip .tar.gz")
        target = sources / f"{sha256_file(path)[:16]}-{path.stem}.jsonl"
        if not target.exists():
            report = import_file(path, target)
            print(f"imported {p}: {report.documents} documents, {report.bad_rows_total} bad rows, "
                  f"{len(report.refused)} files refused", file=sys.stderr)
        inputs.append(str(target))
    return inputs


def load_recipe(path: str) -> list[dict[str, Any]]:
    """A recipe file: a JSON list of ``{"step": name, "config": {...}}``."""
    try:
        recipe = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError("recipe", f"{path}: cannot read a JSON recipe ({e})",
                          'write a JSON list such as [{"step": "length", "config": {"min_chars": 200}}]') from None
    if not isinstance(recipe, list) or not all(isinstance(x, dict) for x in recipe):
        raise ConfigError("recipe", f"{path}: a recipe is a JSON list of steps",
                          'e.g. [{"step": "exact_dedup"}, {"step": "near_dedup", "config": {"threshold": 0.8}}]')
    return recipe


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the arguments, run, and return the manifest (or the cancelled status)."""
    ap = argparse.ArgumentParser(prog="python -m training.core.curate", description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", action="append", default=[], choices=sorted(corpora.CORPORA),
                    help="built-in corpus (repeatable)")
    ap.add_argument("--input", action="append", default=[], help="document JSONL or importable file (repeatable)")
    ap.add_argument("--recipe", help="JSON file: [{\"step\": name, \"config\": {...}}, ...]")
    ap.add_argument("--out", required=True, help="the dataset version folder to create")
    ap.add_argument("--workers", type=int, default=1, help="processes for the stateless steps")
    ap.add_argument("--shard-docs", type=int, default=10_000, help="input documents per shard")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--format", default="jsonl", choices=OUTPUT_FORMATS)
    ap.add_argument("--max-examples", type=int, default=5)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--no-resume", action="store_true", help="start over instead of resuming an interrupted run")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if not args.corpus and not args.input:
        ap.error("give at least one --corpus or --input")
    recipe = load_recipe(args.recipe) if args.recipe else default_recipe()
    out = Path(args.out)
    inputs = prepare_inputs(args.corpus, args.input, out, args.cache_dir)

    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(unit="doc", desc="curate", file=sys.stderr, dynamic_ncols=True)

    def on_progress(p: dict[str, Any]) -> None:
        if bar is None:
            return
        bar.total = p["docs_total"]
        bar.update(p["docs_done"] - bar.n)
        bar.set_postfix(kept=p["docs_kept"], mb_s=p["mb_per_s"], shard=f"{p['shards_done']}/{p['shards_total']}",
                        refresh=False)

    try:
        manifest = run_recipe(inputs, recipe, out, workers=args.workers, shard_docs=args.shard_docs,
                              batch_size=args.batch_size, output_format=args.format, on_progress=on_progress,
                              resume=not args.no_resume, max_examples=args.max_examples)
    finally:
        if bar is not None:
            bar.close()
    counts = manifest["counts"]
    print(f"kept {counts['docs_out']} of {counts['docs_in']} documents "
          f"({manifest['mb_per_s']} MB/s) -> {out}", file=sys.stderr)
    return manifest


if __name__ == "__main__":
    try:
        main()
    except (CurationError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        out_arg = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--out=")), None)
        if out_arg is None and "--out" in sys.argv:
            out_arg = sys.argv[sys.argv.index("--out") + 1]
        where = f" (finished shards are kept in {work_dir_for(out_arg)})" if out_arg else ""
        print(f"\ninterrupted{where}; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
