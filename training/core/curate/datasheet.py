"""A datasheet for a dataset version, generated from its records (not a form to fill in).

The sections follow "Datasheets for Datasets" (Gebru et al.): motivation, composition (by
source, domain and language, before and after curation), collection, preprocessing (the exact
steps, thresholds and removal rates by rule), licences, uses and maintenance. Every number comes
from the version's ``manifest.json`` and ``report.json`` and the source records.

>>> md = datasheet_markdown({"name": "v1", "counts": {"docs_in": 2, "docs_out": 1}, "recipe": [],
...                          "composition": {}, "files": []}, {"steps": []}, [])
>>> md.splitlines()[0]
'# Datasheet: v1'
"""

from __future__ import annotations

from typing import Any

STEP_PURPOSE = {
    "extract": "extract the main text of HTML pages",
    "normalize": "repair and normalize Unicode and whitespace",
    "length": "drop documents outside the length bounds",
    "exact_dedup": "drop exact duplicates (normalized text)",
    "near_dedup": "drop near duplicates (MinHash-LSH over word n-grams)",
    "language": "keep documents in the allowed languages",
    "gopher_quality": "Gopher quality rules",
    "gopher_repetition": "Gopher repetition rules",
    "c4": "C4 line and document rules",
    "fineweb": "FineWeb quality rules",
    "toxicity": "drop toxic / profane documents (offline classifier)",
    "pii": "redact personal information with typed placeholders",
    "decontaminate": "drop documents overlapping the evaluation sets (13-grams)",
    "segment": "split documents into paragraphs or chunks",
    "balance": "resample across sources, domains or languages",
}


def _cell(value: Any) -> str:
    """A Markdown table cell: pipes and line breaks escaped."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f} %" if whole else "–"


def _value_text(value: Any) -> str:
    if isinstance(value, (list, tuple)) and (len(value) > 8 or any(len(str(v)) > 40 for v in value)):
        return f"<{len(value)} items>"
    if isinstance(value, str) and len(value) > 60:
        return value[:57] + "..."
    return str(list(value) if isinstance(value, tuple) else value)


def _config_text(config: dict[str, Any]) -> str:
    """Every setting of a step (defaults included), long lists summarized."""
    shown = {k: v for k, v in (config or {}).items() if k != "workdir" and v not in (None, "", [], {})}
    return ", ".join(f"{k}={_value_text(v)}" for k, v in sorted(shown.items())) or "no settings"


def composition_tables(composition: dict[str, Any]) -> list[str]:
    """Markdown tables of documents and characters by source, domain and language (in → out)."""
    parts = []
    before, after = composition.get("in", {}), composition.get("out", {})
    for field in ("source", "domain", "language"):
        cin, cout = before.get(field, {}), after.get(field, {})
        if not cin and not cout:
            continue
        total_out = sum(v["docs"] for v in cout.values()) or 0
        rows = []
        for value in sorted(set(cin) | set(cout)):
            i, o = cin.get(value, {"docs": 0, "chars": 0}), cout.get(value, {"docs": 0, "chars": 0})
            rows.append([value, i["docs"], o["docs"], _pct(o["docs"], total_out), f"{o['chars']:,}",
                         _pct(i["docs"] - o["docs"], i["docs"])])
        parts.append(f"**By {field}**\n\n" + _table(
            [field, "documents in", "documents out", "share out", "characters out", "removed"], rows))
    return parts


def datasheet_markdown(manifest: dict[str, Any], report: dict[str, Any], sources: list[dict[str, Any]]) -> str:
    """The datasheet of a dataset version as Markdown.

    ``manifest`` and ``report`` are the version's ``manifest.json`` and ``report.json``;
    ``sources`` are records of the imported sources (``name``, ``kind``, ``domain``, ``language``,
    ``licence``, ``documents``, ``content_hash``, ``url`` / ``path``, ``description``; any may be
    missing).
    """
    counts = manifest.get("counts", {})
    name = manifest.get("name", "dataset")
    docs_in, docs_out = counts.get("docs_in", 0), counts.get("docs_out", 0)
    out: list[str] = [f"# Datasheet: {name}", ""]
    out += [f"Generated from the records of dataset version `{name}` (created "
            f"{manifest.get('created_at', 'unknown')}). {docs_out:,} documents "
            f"({counts.get('chars_out', 0):,} characters, {counts.get('words_out', 0):,} words) were kept "
            f"of {docs_in:,} ({_pct(docs_in - docs_out, docs_in)} removed).", ""]

    out += ["## Motivation", "",
            manifest.get("motivation") or (
                "A training corpus for a language model, curated in LLM Studio's data studio from the "
                "sources listed below with the recipe under Preprocessing."), ""]

    out += ["## Composition", ""]
    files = manifest.get("files", [])
    out += [f"{len(files)} {manifest.get('output_format', 'jsonl')} shard(s); each document has `id`, `text` "
            "and the metadata of its source (`source`, `domain`, `language`, `licence`, `kind`, `path`).", ""]
    tables = composition_tables(manifest.get("composition") or report.get("composition") or {})
    out += ["\n\n".join(tables) if tables else "No composition was recorded.", ""]

    out += ["## Collection process", ""]
    if sources:
        rows = [[s.get("name", "?"), s.get("kind", "?"), s.get("domain", "?"), s.get("language", "?"),
                 s.get("documents", "?"), s.get("url") or s.get("path") or s.get("package") or "",
                 (s.get("content_hash") or "")[:12]] for s in sources]
        out += [_table(["source", "kind", "domain", "language", "documents", "origin", "sha256"], rows), ""]
        for s in sources:
            if s.get("description"):
                out += [f"- **{_cell(s.get('name', '?'))}**: {s['description']}"]
        out += [""]
    else:
        out += ["Input files: " + ", ".join(f"`{i['path']}`" for i in manifest.get("inputs", [])) + ".", ""]

    out += ["## Preprocessing", "", "Steps in order, with their exact settings:", ""]
    steps = report.get("steps", [])
    recipe = report.get("recipe") or manifest.get("recipe", [])  # the report's has every default filled in
    rows = []
    for i, item in enumerate(recipe):
        st = steps[i] if i < len(steps) else {}
        rows.append([i + 1, item.get("step"), STEP_PURPOSE.get(item.get("step", ""), ""),
                     _config_text(item.get("config", {})), st.get("docs_in", "–"), st.get("docs_out", "–"),
                     f"{st.get('pct_docs_removed', 0):.2f} %" if st else "–",
                     st.get("docs_modified", "–")])
    out += [_table(["#", "step", "purpose", "settings", "docs in", "docs out", "removed", "changed"], rows), ""]
    rule_rows = []
    for st in steps:
        for rule, n in st.get("by_rule", {}).items():
            ex = (st.get("examples", {}).get(rule) or [{}])[0]
            rule_rows.append([st["name"], rule, n, _pct(n, st.get("docs_in", 0)), ex.get("threshold", "")])
    if rule_rows:
        out += ["Drops and changes by rule (threshold as configured):", "",
                _table(["step", "rule", "documents", "of step input", "threshold"], rule_rows), ""]
    skipped = report.get("skipped") or {}
    for step, why in skipped.items():
        out += [f"- `{step}` could not run everything: {why}"]
    if skipped:
        out += [""]

    out += ["## Licences", ""]
    licences: dict[str, list[str]] = {}
    for s in sources:
        licences.setdefault(s.get("licence") or "unknown", []).append(s.get("name", "?"))
    if licences:
        out += [f"- {_cell(lic)}: {', '.join(names)}" for lic, names in sorted(licences.items())]
    else:
        out += ["Each document carries the `licence` of its source."]
    out += ["", "The dataset inherits the terms of its sources; check them before redistributing.", ""]

    out += ["## Uses", "",
            "Intended for training and evaluating language models in LLM Studio (tokenizer training, "
            "pretraining). Documents overlapping the evaluation sets were removed only when a "
            "`decontaminate` step is listed above. Not suitable for uses the source licences forbid, and "
            "not a representative sample of any population: the composition above is what it contains.", ""]

    out += ["## Maintenance", "",
            f"This version is immutable: its files are listed with SHA-256 digests in `manifest.json` "
            f"({len(files)} file(s)); every drop or change is recorded in `decisions/` (the audit trail). "
            "Changes produce a new version from a new run; the recipe above reproduces this one from the "
            "same sources.", ""]
    return "\n".join(out)
