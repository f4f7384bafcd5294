"""Snapshot → training records: the only bridge from human feedback to training.

Functions here take a snapshot *payload* (plain dicts, see :func:`labeling.actions.build_snapshot_payload`)
and return plain records (dicts) in the formats trainers know (TRL dataset formats):

- ``preference`` / ``preference_conversational``: ``{prompt, chosen, rejected[, margin]}``
- ``kto`` / ``kto_conversational``: ``{prompt, completion, label}``
- ``sft``: ``{messages}`` from corrected answers (annotators' and moderators')
- ``battles``: Chatbot-Arena style battle records ``{model_a, model_b, winner, judge, …}``

Every record of every format carries the same quality and lineage columns, so that trainers can
weight or filter rows and trace them back:

- ``n_votes``: the judgements behind the item (one per annotator: an item takes one judgement
  from each, so this is also its annotator count); 1 for a moderator's report correction;
- ``agreement``: the share of those votes that agree with what this row says (0–1): for a
  preference pair, the votes ordering chosen over rejected; for a KTO row, those giving its
  label; for an SFT row, the annotators who wrote the same correction; for a battle, the votes
  with the same winner;
- ``id`` (the prompt's external id, else ``item-<id>`` or ``report-<id>``; battles call it
  ``question_id``), ``category`` (the prompt's or report's category, else null) and, where they
  apply, ``chosen_model`` / ``rejected_model`` / ``model``.

Imported rows keep the ``agreement`` / ``n_votes`` they arrived with (their votes are not in
this database), so export → import → export is lossless. This module imports no Django;
training code may import it. Records are written as JSONL or Parquet (pyarrow, imported lazily).
"""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Sequence

Record = dict[str, Any]
Messages = list[dict[str, str]]

ROLE_TITLES = {"system": "System", "user": "User", "assistant": "Assistant"}


def render_prompt(messages: Messages) -> str:
    """Standard (string) form of a prompt: a lone user turn as is, otherwise ``Role: content`` blocks."""
    if len(messages) == 1 and messages[0].get("role") == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{ROLE_TITLES.get(m['role'], m['role'].title())}: {m['content']}" for m in messages)


def _answer(text: str, conversational: bool) -> Any:
    return [{"role": "assistant", "content": text}] if conversational else text


def _prompt(messages: Messages, conversational: bool) -> Any:
    return [dict(role=m["role"], content=m["content"]) for m in messages] if conversational \
        else render_prompt(messages)


def _item_id(item: Record) -> str:
    return item.get("external_id") or f"item-{item['id']}"


def _pairwise_outcome(item: Record, aggregate: str) -> list[tuple[str, int | None]]:
    """Winner labels ('a'/'b'/'tie'/'both_bad') with |strength|, per judgement or by majority."""
    votes = [(j["choice"], j.get("strength")) for j in item["judgements"] if j.get("choice")]
    if aggregate == "all":
        return [(c, None if s is None else abs(s)) for c, s in votes]
    counts = Counter(c for c, _ in votes)
    if not counts:
        return []
    top = counts.most_common()
    if len(top) > 1 and top[0][1] == top[1][1]:
        return []  # no majority: this item belongs in the adjudication queue, not the training set
    winner = top[0][0]
    strengths = [abs(s) for c, s in votes if c == winner and s is not None]
    return [(winner, round(sum(strengths) / len(strengths)) if strengths else None)]


def _consensus_ranking(item: Record, aggregate: str) -> list[list[int]]:
    rankings = [j["ranking"] for j in item["judgements"] if j.get("ranking")]
    if aggregate == "all" or not rankings:
        return rankings
    score: dict[int, float] = defaultdict(float)  # Borda count
    for r in rankings:
        for pos, rid in enumerate(r):
            score[rid] += len(r) - pos
    return [sorted(score, key=lambda rid: (-score[rid], rid))]


def _mean_rating(judgements: list[Record], response_id: int) -> float | None:
    """Mean of every criterion score these judgements gave the response, or None if none did."""
    values = [v for j in judgements for v in ((j.get("ratings") or {}).get(str(response_id)) or {}).values()
              if isinstance(v, (int, float))]
    return sum(values) / len(values) if values else None


def _share(agree: int, votes: int) -> float:
    return round(agree / votes, 4) if votes else 0.0


REPORT_VOTES = (1.0, 1)  # (agreement, n_votes) of a report correction: one moderator's decision


def _pairs_from_item(item: Record, aggregate: str) -> Iterable[tuple[Record, Record, int | None, tuple[float, int]]]:
    """(chosen response, rejected response, margin, (agreement, n_votes)) pairs an item yields:
    ``n_votes`` is how many of the item's judgements there are, ``agreement`` the share of them
    that orders this pair the same way."""
    responses = item["responses"]
    by_id = {r["id"]: r for r in responses}
    task = item.get("task_type", "pairwise")
    if task == "pairwise" and len(responses) == 2:
        choices = [j["choice"] for j in item["judgements"] if j.get("choice")]
        for winner, margin in _pairwise_outcome(item, aggregate):
            votes = (_share(choices.count(winner), len(choices)), len(choices))
            if winner == "a":
                yield responses[0], responses[1], margin, votes
            elif winner == "b":
                yield responses[1], responses[0], margin, votes
    elif task == "ranking":
        rankings = [j["ranking"] for j in item["judgements"] if j.get("ranking")]
        for ranking in _consensus_ranking(item, aggregate):
            for better, worse in combinations([rid for rid in ranking if rid in by_id], 2):
                agree = sum(1 for r in rankings if better in r and worse in r and r.index(better) < r.index(worse))
                yield by_id[better], by_id[worse], None, (_share(agree, len(rankings)), len(rankings))
    elif task == "rating":
        means = {r["id"]: _mean_rating(item["judgements"], r["id"]) for r in responses}
        raters = [j for j in item["judgements"] if j.get("ratings")]

        def rater_prefers(x: Record, y: Record) -> int:
            return sum(1 for j in raters if (_mean_rating([j], x["id"]) or 0) > (_mean_rating([j], y["id"]) or 0))

        scored = [r for r in responses if means[r["id"]] is not None]
        for x, y in combinations(scored, 2):
            if means[x["id"]] < means[y["id"]]:
                x, y = y, x
            if means[x["id"]] > means[y["id"]]:
                yield x, y, None, (_share(rater_prefers(x, y), len(raters)), len(raters))
    elif task == "correction" and responses:
        original = responses[0]
        texts = [j["corrected_text"] for j in item["judgements"] if j.get("corrected_text")]
        for text in _corrections(item, aggregate):
            if text != original["text"]:
                yield ({"text": text, "model": "human", "source": "human"}, original, None,
                       (_share(texts.count(text), len(texts)), len(texts)))


def _votes(item: Record, computed: tuple[float, int]) -> tuple[float, int]:
    """The agreement an imported item arrived with (kept for a lossless round trip), else ``computed``."""
    if "agreement" in item and "n_votes" in item and all(j.get("imported") for j in item["judgements"]):
        return float(item["agreement"]), int(item["n_votes"])
    return computed


def _corrections(item: Record, aggregate: str) -> list[str]:
    texts = [j["corrected_text"] for j in item["judgements"] if j.get("corrected_text")]
    if aggregate == "all":
        return texts
    return list(dict.fromkeys(texts))  # distinct, in order


def preference_records(payload: Record, *, conversational: bool = False, aggregate: str = "majority",
                       margin: bool = False) -> list[Record]:
    """TRL preference records. ``aggregate``: ``majority`` (one pair per item outcome; items without
    a majority are left out) or ``all`` (one pair per judgement). ``margin``: add the mean |strength|
    of the winning votes as ``margin`` (0 where no strength was given) — RewardTrainer subtracts it.
    ``agreement`` / ``n_votes``: the share of the item's judgements that order the pair this way."""
    out: list[Record] = []
    for item in payload.get("items", []):
        for chosen, rejected, m, votes in _pairs_from_item(item, aggregate):
            rec = {"prompt": _prompt(item["prompt"], conversational),
                   "chosen": _answer(chosen["text"], conversational),
                   "rejected": _answer(rejected["text"], conversational)}
            if margin:
                rec["margin"] = float(m or 0)
            agreement, n_votes = _votes(item, votes)
            rec.update(id=_item_id(item), chosen_model=chosen.get("model") or "",
                       rejected_model=rejected.get("model") or "", category=item.get("category"),
                       agreement=agreement, n_votes=n_votes)
            out.append(rec)
    for rep in payload.get("reports", []):
        if not rep.get("corrected"):
            continue
        rec = {"prompt": _prompt(rep["prompt"], conversational),
               "chosen": _answer(rep["corrected"], conversational),
               "rejected": _answer(rep["response"], conversational)}
        if margin:
            rec["margin"] = 0.0
        rec.update(id=f"report-{rep['id']}", chosen_model="human", rejected_model=rep.get("model") or "",
                   category=rep["category"], agreement=REPORT_VOTES[0], n_votes=REPORT_VOTES[1])
        out.append(rec)
    return out


def _rating_votes(item: Record, response_id: int, label: bool, mid: float) -> tuple[float, int]:
    """(share of the raters of a response whose own mean score falls on ``label``'s side of the
    scale midpoint, raters of it)."""
    means = [m for m in (_mean_rating([j], response_id) for j in item["judgements"]) if m is not None]
    return _share(sum(1 for m in means if m != mid and (m > mid) == label), len(means)), len(means)


def kto_records(payload: Record, *, conversational: bool = False, aggregate: str = "majority") -> list[Record]:
    """Unpaired preference (KTO): chosen answers ``label: true``, rejected and both-bad ``false``,
    imported binary labels as given, rating items by mean rating against the scale midpoint, and
    each reported answer with a correction ``false`` (its correction ``true``). ``agreement`` /
    ``n_votes``: the share of the item's votes that give this row's label."""
    out: list[Record] = []

    def add(item_id: str, prompt: Messages, text: str, label: bool, model: str, category: str | None,
            votes: tuple[float, int]) -> None:
        out.append({"prompt": _prompt(prompt, conversational), "completion": _answer(text, conversational),
                    "label": label, "id": item_id, "model": model, "category": category,
                    "agreement": votes[0], "n_votes": votes[1]})

    for item in payload.get("items", []):
        iid, prompt, cat = _item_id(item), item["prompt"], item.get("category")
        labels = [j["label"] for j in item["judgements"] if j.get("label") is not None]
        if labels and len(item["responses"]) == 1:
            r = item["responses"][0]
            tally = Counter(labels)
            votes = labels if aggregate == "all" else (
                [tally[True] > tally[False]] if tally[True] != tally[False] else [])
            for label in votes:
                add(iid, prompt, r["text"], bool(label), r.get("model") or "", cat,
                    _votes(item, (_share(tally[label], len(labels)), len(labels))))
            continue
        task = item.get("task_type", "pairwise")
        if task == "pairwise" and len(item["responses"]) == 2:
            a, b = item["responses"]
            choices = [j["choice"] for j in item["judgements"] if j.get("choice")]
            for winner, _ in _pairwise_outcome(item, aggregate):
                votes = _votes(item, (_share(choices.count(winner), len(choices)), len(choices)))
                if winner in ("a", "b"):
                    good, bad = (a, b) if winner == "a" else (b, a)
                    add(iid, prompt, good["text"], True, good.get("model") or "", cat, votes)
                    add(iid, prompt, bad["text"], False, bad.get("model") or "", cat, votes)
                elif winner == "both_bad":
                    add(iid, prompt, a["text"], False, a.get("model") or "", cat, votes)
                    add(iid, prompt, b["text"], False, b.get("model") or "", cat, votes)
        elif task == "rating":
            mid = (1 + int(item.get("likert_max", 5))) / 2
            for r in item["responses"]:
                mean = _mean_rating(item["judgements"], r["id"])
                if mean is not None and mean != mid:
                    add(iid, prompt, r["text"], mean > mid, r.get("model") or "", cat,
                        _votes(item, _rating_votes(item, r["id"], mean > mid, mid)))
        else:
            for chosen, rejected, _m, votes in _pairs_from_item(item, aggregate):
                add(iid, prompt, chosen["text"], True, chosen.get("model") or "", cat, _votes(item, votes))
                add(iid, prompt, rejected["text"], False, rejected.get("model") or "", cat, _votes(item, votes))
    for rep in payload.get("reports", []):
        if rep.get("corrected"):
            rid, cat = f"report-{rep['id']}", rep["category"]
            add(rid, rep["prompt"], rep["response"], False, rep.get("model") or "", cat, REPORT_VOTES)
            add(rid, rep["prompt"], rep["corrected"], True, "human", cat, REPORT_VOTES)
    return out


def sft_records(payload: Record, *, aggregate: str = "majority") -> list[Record]:
    """``{messages}`` conversations ending in a corrected answer (annotators' and moderators').
    ``agreement`` / ``n_votes``: the share of the item's corrections that are this text."""
    out: list[Record] = []
    for item in payload.get("items", []):
        texts = [j["corrected_text"] for j in item["judgements"] if j.get("corrected_text")]
        for text in _corrections(item, aggregate):
            agreement, n_votes = _votes(item, (_share(texts.count(text), len(texts)), len(texts)))
            out.append({"messages": [*_prompt(item["prompt"], True), {"role": "assistant", "content": text}],
                        "id": _item_id(item), "category": item.get("category"),
                        "agreement": agreement, "n_votes": n_votes})
    for rep in payload.get("reports", []):
        if rep.get("corrected"):
            out.append({"messages": [*_prompt(rep["prompt"], True), {"role": "assistant", "content": rep["corrected"]}],
                        "id": f"report-{rep['id']}", "category": rep["category"],
                        "agreement": REPORT_VOTES[0], "n_votes": REPORT_VOTES[1]})
    return out


ARENA_WINNER = {"a": "model_a", "b": "model_b", "tie": "tie", "both_bad": "tie (bothbad)"}


def battle_records(payload: Record) -> list[Record]:
    """One Chatbot-Arena style record per pairwise judgement (model names, winner, judge, turn),
    with the item's ``category`` and ``agreement`` / ``n_votes`` (the share of its votes with this
    record's winner)."""
    out: list[Record] = []
    for item in payload.get("items", []):
        if item.get("task_type", "pairwise") != "pairwise" or len(item["responses"]) != 2:
            continue
        a, b = item["responses"]
        turns = sum(1 for m in item["prompt"] if m.get("role") == "user")
        choices = [j["choice"] for j in item["judgements"] if j.get("choice") in ARENA_WINNER]
        for j in item["judgements"]:
            if j.get("choice") in ARENA_WINNER:
                agreement, n_votes = _votes(item, (_share(choices.count(j["choice"]), len(choices)), len(choices)))
                out.append({"model_a": a.get("model") or "", "model_b": b.get("model") or "",
                            "winner": ARENA_WINNER[j["choice"]], "judge": f"annotator-{j['annotator']}",
                            "question_id": _item_id(item), "turn": turns, "anony": True,
                            "tstamp": j.get("created_at"), "strength": j.get("strength"),
                            "category": item.get("category"), "agreement": agreement, "n_votes": n_votes})
    return out


FORMATS: dict[str, Callable[..., list[Record]]] = {
    "preference": lambda p, **kw: preference_records(p, conversational=False, **kw),
    "preference_conversational": lambda p, **kw: preference_records(p, conversational=True, **kw),
    "kto": lambda p, **kw: kto_records(p, conversational=False, **{k: v for k, v in kw.items() if k != "margin"}),
    "kto_conversational": lambda p, **kw: kto_records(p, conversational=True,
                                                      **{k: v for k, v in kw.items() if k != "margin"}),
    "sft": lambda p, **kw: sft_records(p, **{k: v for k, v in kw.items() if k == "aggregate"}),
    "battles": lambda p, **kw: battle_records(p),
}


def records(payload: Record, fmt: str, **options: Any) -> list[Record]:
    """Training records of one format from a snapshot payload (see :data:`FORMATS`)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {sorted(FORMATS)}")
    return FORMATS[fmt](payload, **options)


# ---- files ------------------------------------------------------------------------------------

def write_jsonl(rows: Sequence[Record], fp: IO[str]) -> None:
    for row in rows:
        fp.write(json.dumps(row, ensure_ascii=False) + "\n")


def jsonl_bytes(rows: Sequence[Record]) -> bytes:
    buf = io.StringIO()
    write_jsonl(rows, buf)
    return buf.getvalue().encode("utf-8")


def parquet_bytes(rows: Sequence[Record]) -> bytes:
    """Parquet file contents (pyarrow infers the schema: message lists become list<struct>)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(list(rows))
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def read_jsonl(source: str | bytes | Path) -> list[Record]:
    text = Path(source).read_text("utf-8") if isinstance(source, Path) else (
        source.decode("utf-8") if isinstance(source, bytes) else source)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_parquet(source: bytes | Path) -> list[Record]:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(source) if isinstance(source, bytes) else source)
    return table.to_pylist()


def snapshot_records(snapshot_id: int, fmt: str, **options: Any) -> tuple[str, str, list[Record]]:
    """``(label, content_sha256, records)`` of a stored snapshot — what a training run records as
    its data lineage (e.g. ``"helpfulness@v3"`` and the hash). Imports the Django model lazily so
    the functions above stay usable without Django."""
    from labeling.models import Snapshot

    snap = Snapshot.objects.select_related("project").get(pk=snapshot_id)
    return snap.label, snap.content_sha256, records(snap.payload, fmt, **options)
