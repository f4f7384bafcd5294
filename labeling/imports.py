"""Parsing JSONL imports into plain item specifications (no database access here).

One line is one JSON object in one of these shapes (detected by its keys):

- **prompt / item**: ``{"prompt": "…"}`` or ``{"messages": [{"role", "content"}, …]}``, optional
  ``"responses": ["text", …]`` or ``[{"text", "model", "source"}, …]``, ``"id"``, ``"metadata"``,
  ``"gold": {"choice": "a"|"b"|"tie"|"both_bad"}`` (choice refers to the responses as listed).
- **preference** (TRL, standard or conversational, explicit or implicit prompt):
  ``{"prompt", "chosen", "rejected"[, "margin", "id", "chosen_model", "rejected_model", "category",
  "agreement", "n_votes"]}`` (agreement and vote count are kept with the item for later exports)
- **KTO**: ``{"prompt", "completion", "label"[, "id", "model", "category"]}``
- **SFT**: ``{"messages": [..., {"role": "assistant", …}]}`` with ``"kind": "sft"`` or an ``"id"``
  starting with the export's lineage — a conversation ending in an assistant turn.
- **Argilla** (v2 record export): ``{"fields": {"prompt"|"instruction", "response1", "response2"…},
  "metadata": {…}, "responses": {"<question>": [{"value", "user_id", "status"}]}}`` — text fields
  become prompt and responses, metadata is kept, each user's submitted answers (a ranking of the
  response fields, a label naming one, ratings) become that user's judgement.
- **Label Studio** (JSON task export): ``{"data": {"prompt", "answer1", "answer2"…}, "meta": {…},
  "annotations": [{"completed_by", "result": [...], "lead_time"}]}`` — ``pairwise``
  (``selected: left|right``), ``rating`` and ``ranker`` results, one judgement per annotation.

:func:`parse_jsonl` returns ``(specs, errors)``; every error names its line number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

ROLES = {"system", "user", "assistant"}
PAIR_CHOICES = {"a", "b", "tie", "both_bad"}
MAX_LINE_CHARS = 2_000_000


@dataclass
class ImportError_:
    line: int
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "message": self.message}


@dataclass
class ItemSpec:
    """What one import line creates: a prompt, responses (maybe none) and maybe a judgement."""

    line: int
    kind: str  # item | preference | kto | sft
    messages: list[dict[str, str]]
    external_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    responses: list[dict[str, str]] = field(default_factory=list)  # {"text", "model", "source"}
    # judgement to record as imported: {"choice"/"strength"} with responses in listed order, or
    # {"label": bool}, or {"corrected_text": str}
    judgement: dict[str, Any] | None = None
    gold: dict[str, Any] | None = None
    keep_order: bool = False  # True when positions carry meaning (listed order = shown order)
    # answers of other tools' annotators (Argilla, Label Studio), one per annotator, in listed
    # order: {"annotator": "argilla-<user id>", "order": [listed indices best first] | "choice":
    # "a"|"b"|"tie"|"both_bad" | "ratings": {listed index: {criterion: score}}, "comment",
    # "time_on_task_ms"}
    annotations: list[dict[str, Any]] = field(default_factory=list)


class LineError(ValueError):
    pass


def _messages(value: Any, what: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise LineError(f"'{what}' is empty")
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value:
        out = []
        for i, m in enumerate(value):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise LineError(f"'{what}[{i}]' must be {{\"role\": system|user|assistant, \"content\": text}}")
            out.append({"role": m["role"], "content": m["content"]})
        return out
    raise LineError(f"'{what}' must be text or a non-empty list of messages")


def _answer_text(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and value[-1].get("role") == "assistant" \
            and isinstance(value[-1].get("content"), str):
        return value[-1]["content"]
    raise LineError(f"'{what}' must be text or a message list ending with an assistant turn")


def _meta(obj: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: obj[k] for k in keys if obj.get(k) not in (None, "")}


def _external_id(obj: dict[str, Any]) -> str:
    value = obj.get("id", obj.get("external_id", ""))
    if value is None:
        return ""
    if not isinstance(value, (str, int)):
        raise LineError("'id' must be text or a number")
    return str(value)[:200]


def _response_list(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise LineError("'responses' must be a list of texts or {\"text\", \"model\", \"source\"} objects")
    out = []
    for i, r in enumerate(value):
        if isinstance(r, str):
            out.append({"text": r, "model": "", "source": "file"})
        elif isinstance(r, dict) and isinstance(r.get("text"), str):
            source = r.get("source", "model" if r.get("model") else "file")
            if source not in ("checkpoint", "model", "human", "file"):
                raise LineError(f"'responses[{i}].source' must be checkpoint, model, human or file")
            row = {"text": r["text"], "model": str(r.get("model") or "")[:200], "source": source}
            if isinstance(r.get("author"), str) and r["author"]:
                row["author"] = r["author"]  # a username: that user never reviews this response
            out.append(row)
        else:
            raise LineError(f"'responses[{i}]' must be text or an object with 'text'")
    return out


def _agreement(obj: dict[str, Any]) -> dict[str, Any]:
    """``agreement`` (0–1) and ``n_votes`` (≥ 1) of an exported preference record, kept as given."""
    if obj.get("agreement") is None and obj.get("n_votes") is None:
        return {}
    agreement, votes = obj.get("agreement"), obj.get("n_votes")
    if not isinstance(agreement, (int, float)) or isinstance(agreement, bool) or not 0 <= agreement <= 1:
        raise LineError("'agreement' must be a number from 0 to 1 (with 'n_votes')")
    if not isinstance(votes, int) or isinstance(votes, bool) or votes < 1:
        raise LineError("'n_votes' must be a whole number of at least 1 (with 'agreement')")
    return {"agreement": float(agreement), "n_votes": votes}


def _implicit_prompt(chosen: list, rejected: list) -> list[dict[str, str]]:
    prefix = []
    for a, b in zip(chosen[:-1], rejected[:-1]):
        if a != b:
            break
        prefix.append(a)
    if not prefix:
        raise LineError("implicit-prompt preference: 'chosen' and 'rejected' share no prompt turns")
    return _messages(prefix, "prompt")


# ---- other tools' exports ------------------------------------------------------------------------

ANSWER_PREFIXES = ("response", "answer", "completion")


def _tool_metadata(source: str, extra: Any) -> dict[str, Any]:
    if extra is not None and not isinstance(extra, dict):
        raise LineError("'metadata' / 'meta' must be an object")
    return {**(extra or {}), "imported_from": source}


def _tool_item(obj: dict[str, Any], line: int, ext: str, source: str, where: str, prompt_keys: tuple[str, ...],
               names: list[str], extra: Any) -> ItemSpec:
    """The item of another tool's record: the prompt is the first of ``prompt_keys`` in ``obj[where]``,
    the responses are its text fields ``names`` (in listed order), ``extra`` metadata is kept."""
    texts = obj[where]
    prompt = next((texts[k] for k in prompt_keys if k in texts), None)
    return ItemSpec(line, "item", _messages(prompt, f"{where}.prompt"), ext or str(obj.get("id") or ""),
                    _tool_metadata(source, extra),
                    [{"text": texts[n], "model": "", "source": "file"} for n in names], keep_order=True)


def _order(value: Any, names: list[str]) -> list[int] | None:
    """A ranking answer as listed indices, best first: a list of field names, or Argilla v1's
    ``[{"value": name, "rank": n}]``; None when ``value`` is not a ranking of these fields."""
    if isinstance(value, list) and value and all(isinstance(v, dict) and v.get("value") in names for v in value):
        value = [v["value"] for v in sorted(value, key=lambda v: v.get("rank") or 0)]
    if isinstance(value, list) and value and all(isinstance(v, str) and v in names for v in value):
        if len(set(value)) != len(value):
            raise LineError(f"a ranking names a response twice: {value}")
        return [names.index(v) for v in value]
    return None


def _answer_into(answer: dict[str, Any], question: str, value: Any, names: list[str], target: str | None) -> None:
    """Fold one answer of one annotator into ``answer`` (see :attr:`ItemSpec.annotations`)."""
    order = _order(value, names)
    if order is not None:
        answer["order"] = order
    elif isinstance(value, str) and value in names and len(names) == 2:
        answer["choice"] = "ab"[names.index(value)]
    elif isinstance(value, str) and value in ("tie", "both_bad"):
        answer["choice"] = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        # a rating: of the response its question (or target) names, else of a lone response
        named = [i for i, n in enumerate(names) if n == target or (target is None and n in question)]
        index = named[0] if named else (0 if len(names) == 1 else None)
        if index is None:
            raise LineError(f"rating '{question}': say which response it rates (name it in the question)")
        criterion = question.replace(names[index], "").strip("_-. ") or question
        answer.setdefault("ratings", {}).setdefault(index, {})[criterion] = value
    elif isinstance(value, str) and value.strip():
        answer["comment"] = (answer.get("comment", "") + "\n" + f"{question}: {value}").strip()


def _argilla(obj: dict[str, Any], line: int, ext: str) -> ItemSpec:
    """Argilla record export (v2 ``to_list(flatten=False)`` / JSON): text fields become the prompt and
    responses, ``metadata`` is kept, and each user's answers (``responses: {question: [{"value",
    "user_id"}]}``: rankings, label choices naming a response, ratings) become one judgement."""
    fields = obj["fields"]
    names = [k for k, v in sorted(fields.items()) if k.startswith(ANSWER_PREFIXES) and isinstance(v, str)]
    spec = _tool_item(obj, line, ext, "argilla", "fields", ("prompt", "instruction", "question"), names,
                      obj.get("metadata"))
    if obj.get("status") not in (None, "completed", "pending"):
        raise LineError(f"unknown Argilla record status {obj.get('status')!r}")
    answers = obj.get("responses") or {}
    if not isinstance(answers, dict):
        raise LineError("Argilla 'responses' must map each question to a list of {\"value\", \"user_id\"}")
    by_user: dict[str, dict[str, Any]] = {}
    for question, given in answers.items():
        for ans in given if isinstance(given, list) else []:
            if not isinstance(ans, dict) or ans.get("status", "submitted") != "submitted":
                continue  # drafts and discarded answers are not judgements
            user = str(ans.get("user_id") or "unknown")
            _answer_into(by_user.setdefault(user, {}), str(question), ans.get("value"), names, None)
    spec.annotations = [{"annotator": f"argilla-{u}", **a} for u, a in by_user.items() if a]
    return spec


def _label_studio(obj: dict[str, Any], line: int, ext: str) -> ItemSpec:
    """Label Studio task export (JSON): ``data`` text fields become the prompt and responses,
    ``meta`` is kept, and every annotation that was not cancelled becomes one judgement of its
    ``completed_by`` user: ``pairwise`` (selected left/right), ``rating`` (``to_name`` names the
    response, ``from_name`` the criterion), ``ranker`` and ``textarea`` results; ``lead_time``
    becomes the time on task."""
    data = obj["data"]
    names = [k for k in ("answer1", "answer2", "answer3", "answer4", "response1", "response2", "response3",
                         "response4", "left", "right") if isinstance(data.get(k), str)]
    spec = _tool_item(obj, line, ext, "label_studio", "data", ("prompt", "text", "question"), names, obj.get("meta"))
    for n, ann in enumerate(obj.get("annotations") or obj.get("completions") or []):
        if not isinstance(ann, dict) or ann.get("was_cancelled"):
            continue
        who = ann.get("completed_by")
        who = who.get("email") or who.get("id") if isinstance(who, dict) else who
        answer: dict[str, Any] = {}
        for res in ann.get("result") or []:
            value = (res or {}).get("value") or {}
            if value.get("selected") in ("left", "right") and len(names) == 2:
                answer["choice"] = "a" if value["selected"] == "left" else "b"
            elif "rating" in value:
                _answer_into(answer, str(res.get("from_name") or "rating"), value["rating"], names, res.get("to_name"))
            elif "ranker" in value:
                ranked = value["ranker"]
                ranked = next(iter(ranked.values()), []) if isinstance(ranked, dict) else ranked
                _answer_into(answer, str(res.get("from_name") or "ranking"), ranked, names, None)
            elif isinstance(value.get("text"), list):
                text = " ".join(map(str, value["text"]))
                _answer_into(answer, str(res.get("from_name") or "text"), text, names, None)
        if isinstance(ann.get("lead_time"), (int, float)) and answer:
            answer["time_on_task_ms"] = int(ann["lead_time"] * 1000)
        if answer:
            spec.annotations.append({"annotator": f"label-studio-{who if who is not None else n}", **answer})
    return spec


def parse_line(obj: Any, line: int) -> ItemSpec:
    """One decoded JSON object → :class:`ItemSpec` (raises :class:`LineError` with the reason)."""
    if not isinstance(obj, dict):
        raise LineError("each line must be a JSON object")
    ext = _external_id(obj)
    if "chosen" in obj and "rejected" in obj:
        if "prompt" in obj:
            messages = _messages(obj["prompt"], "prompt")
        elif isinstance(obj["chosen"], list) and isinstance(obj["rejected"], list):
            messages = _implicit_prompt(obj["chosen"], obj["rejected"])
        else:
            raise LineError("preference record without 'prompt' (implicit prompts need message lists)")
        judgement: dict[str, Any] = {"choice": "a"}
        if obj.get("margin") is not None:
            m = obj["margin"]
            if not isinstance(m, (int, float)) or m < 0 or m > 3 or float(m) != int(m):
                raise LineError("'margin' must be a whole number from 0 to 3 (stored as a strength)")
            judgement["strength"] = -int(m)
        responses = [
            {"text": _answer_text(obj["chosen"], "chosen"), "model": str(obj.get("chosen_model") or "")[:200],
             "source": "human" if obj.get("chosen_model") == "human" else ("model" if obj.get("chosen_model") else "file")},
            {"text": _answer_text(obj["rejected"], "rejected"), "model": str(obj.get("rejected_model") or "")[:200],
             "source": "model" if obj.get("rejected_model") else "file"},
        ]
        return ItemSpec(line, "preference", messages, ext, {**_meta(obj, ("category",)), **_agreement(obj)},
                        responses, judgement)
    if "completion" in obj and "label" in obj:
        if not isinstance(obj["label"], bool):
            raise LineError("'label' must be true or false")
        messages = _messages(obj.get("prompt"), "prompt")
        model = str(obj.get("model") or "")[:200]
        responses = [{"text": _answer_text(obj["completion"], "completion"), "model": model,
                      "source": "human" if model == "human" else ("model" if model else "file")}]
        return ItemSpec(line, "kto", messages, ext, _meta(obj, ("category",)), responses, {"label": obj["label"]})
    if isinstance(obj.get("fields"), dict):  # Argilla
        return _argilla(obj, line, ext)
    if isinstance(obj.get("data"), dict):  # Label Studio
        return _label_studio(obj, line, ext)
    if "messages" in obj and "prompt" not in obj and "responses" not in obj:
        messages = _messages(obj["messages"], "messages")
        if messages[-1]["role"] == "assistant" and len(messages) >= 2:  # SFT conversation
            text = messages[-1]["content"]
            return ItemSpec(line, "sft", messages[:-1], ext, _meta(obj, ("category",)),
                            [{"text": text, "model": "human", "source": "human"}], {"corrected_text": text})
    if "prompt" in obj or "messages" in obj:
        messages = _messages(obj["prompt"] if "prompt" in obj else obj["messages"],
                             "prompt" if "prompt" in obj else "messages")
        if messages[-1]["role"] != "user":
            raise LineError("a prompt must end with a user turn")
        metadata = obj.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise LineError("'metadata' must be an object")
        responses = _response_list(obj.get("responses", []))
        gold = obj.get("gold")
        if gold is not None:
            if not isinstance(gold, dict) or ("choice" in gold and gold["choice"] not in PAIR_CHOICES):
                raise LineError("'gold' must be {\"choice\": \"a\"|\"b\"|\"tie\"|\"both_bad\"} or {\"ranking\": [...]}")
            if len(responses) < 1:
                raise LineError("a gold item needs its responses")
        return ItemSpec(line, "item", messages, ext, metadata, responses, gold=gold, keep_order=gold is not None)
    raise LineError("unknown record: expected 'prompt'/'messages' (+ 'responses'), 'chosen'/'rejected', "
                    "'completion'/'label', Argilla 'fields' or Label Studio 'data'")


def parse_jsonl(text: str) -> tuple[list[ItemSpec], list[ImportError_]]:
    """Parse every non-blank line; returns the good specs and the bad lines (1-based numbers)."""
    specs: list[ItemSpec] = []
    errors: list[ImportError_] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        if len(raw) > MAX_LINE_CHARS:
            errors.append(ImportError_(n, f"line longer than {MAX_LINE_CHARS} characters"))
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            errors.append(ImportError_(n, f"not valid JSON: {e.msg} (column {e.colno})"))
            continue
        try:
            specs.append(parse_line(obj, n))
        except LineError as e:
            errors.append(ImportError_(n, str(e)))
    return specs, errors
