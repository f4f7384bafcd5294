"""Parsing JSONL imports into plain item specifications (no database access here).

One line is one JSON object in one of these shapes (detected by its keys):

- **prompt / item**: ``{"prompt": "…"}`` or ``{"messages": [{"role", "content"}, …]}``, optional
  ``"responses": ["text", …]`` or ``[{"text", "model", "source"}, …]``, ``"id"``, ``"metadata"``,
  ``"gold": {"choice": "a"|"b"|"tie"|"both_bad"}`` (choice refers to the responses as listed).
- **preference** (TRL, standard or conversational, explicit or implicit prompt):
  ``{"prompt", "chosen", "rejected"[, "margin", "id", "chosen_model", "rejected_model", "category",
  "agreement", "n_votes"]}`` (agreement and vote count are kept with the item for later exports)
- **KTO**: ``{"prompt", "completion", "label"[, "id", "model", "category", "agreement", "n_votes"]}``
- **SFT**: ``{"messages": [..., {"role": "assistant", …}]}`` (optional ``"id"``, ``"category"``,
  ``"agreement"``, ``"n_votes"``) — a conversation ending in an assistant turn.
- **Argilla** (v2 record export): ``{"fields": {"prompt"|"instruction", "response1", "response2"…},
  "metadata": {…}, "responses": {"<question>": [{"value", "user_id", "status"}]},
  "suggestions": {"<question>": {"value", "score", "agent"}}}`` — text fields become prompt and
  responses, metadata is kept, each user's submitted answers (a ranking of the response fields,
  a label naming one, ratings) become that user's judgement.
- **Label Studio** (JSON task export): ``{"data": {"prompt", "answer1", "answer2"…}, "meta": {…},
  "annotations": [{"completed_by", "result": [...], "lead_time"}], "predictions": [{"model_version",
  "score", "result": [...]}]}`` — ``pairwise`` (``selected: left|right``), ``rating``, ``ranker``,
  ``choices`` and ``textarea`` results, one judgement per annotation.

A battle record (``model_a``, ``model_b``, ``winner``) is refused with the reason: it holds no texts.

The tools' model output (Argilla ``suggestions``, Label Studio ``predictions``) is never a
judgement: a written answer (a text for a question named like ``response`` / ``answer`` /
``correct…``) becomes a candidate response whose source is the named model (``agent`` /
``model_version``); a model's ranking, choice, ratings or remarks about the listed responses
become a *pre-annotation*, kept in the prompt's metadata (``pre_annotations``) with the model,
its score and the questions.

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
    # candidate responses the tool's models wrote (Argilla suggestions, Label Studio predictions):
    # {"text", "model", "source": "model", "metadata"}; stored after the listed responses
    suggested: list[dict[str, Any]] = field(default_factory=list)
    # the tool's models' answers about the listed responses, never judgements (see _model_answer)
    pre_annotations: list[dict[str, Any]] = field(default_factory=list)


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
    """``agreement`` (0–1) and ``n_votes`` (≥ 1) of an exported preference, KTO or SFT record, kept as given."""
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
# a model's text suggestion for a question whose name has one of these words is a written answer
# (a candidate response); other text suggestions are remarks kept with the pre-annotation
WRITTEN_ANSWER_WORDS = ("response", "answer", "completion", "correct", "rewrite", "output")


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


def _answer_into(answer: dict[str, Any], question: str, value: Any, names: list[str], target: str | None) -> bool:
    """Fold one answer to one question into ``answer`` (see :attr:`ItemSpec.annotations`); False when
    the value is none of the answers understood here (it is then left out of ``answer``)."""
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
    else:
        return False
    return True


def _understood(pre: dict[str, Any], question: str, value: Any, names: list[str], target: str | None) -> bool:
    """:func:`_answer_into` for a model's answer, where a score that names no response is kept as
    given (a pre-annotation loses nothing by staying raw; a judgement could not)."""
    try:
        return _answer_into(pre, question, value, names, target)
    except LineError:
        if isinstance(value, (int, float)):
            return False
        raise


def _model_answer(spec: ItemSpec, tool: str, model: Any, score: Any, given: list[tuple[str, Any, str | None]],
                  names: list[str]) -> None:
    """One model's suggestion (Argilla) or prediction (Label Studio), never a judgement: a written
    answer becomes a candidate response from that model (:attr:`ItemSpec.suggested`); answers about
    the listed responses (a ranking, a choice, ratings, remarks, or values not understood here, kept
    as given) become one pre-annotation (:attr:`ItemSpec.pre_annotations`)."""
    if model is not None and not isinstance(model, (str, int)):
        raise LineError(f"{tool}: the model name (agent / model_version) must be text")
    scores = score if isinstance(score, list) else [score]
    if not all(s is None or (isinstance(s, (int, float)) and not isinstance(s, bool)) for s in scores):
        raise LineError(f"{tool}: a suggestion's 'score' must be a number or a list of numbers")
    model = str(model if model is not None else "")[:200]
    pre: dict[str, Any] = {}
    questions: list[str] = []  # those the pre-annotation answers
    for question, value, target in given:
        if isinstance(value, str) and value.strip() and value not in names and value not in PAIR_CHOICES \
                and any(w in question.lower() for w in WRITTEN_ANSWER_WORDS):
            if value not in [r["text"] for r in spec.responses + spec.suggested]:
                spec.suggested.append({"text": value, "model": model, "source": "model", "metadata": {
                    "imported_from": tool, "suggestion_for": question,
                    **({"score": score} if score is not None else {})}})
            continue
        if isinstance(value, str) and value in names:  # a label naming the best response (of any number)
            pre["best"] = names.index(value)
        elif not _understood(pre, question, value, names, target):
            if value in (None, [], {}):
                continue
            pre.setdefault("values", {})[question] = value
        questions.append(question)
    if pre:
        spec.pre_annotations.append({"tool": tool, "model": model, "score": score, "questions": questions, **pre})


def pre_annotation_record(pre: dict[str, Any], response_ids: list[int]) -> dict[str, Any]:
    """A parsed pre-annotation with listed indices turned into the stored responses' ids
    (``response_ids[i]`` is listed response ``i``): ``ranking`` (ids, best first), ``preferred``
    (id) or ``choice`` (tie / both_bad), ``ratings`` ({id: {criterion: score}}), ``comment``,
    ``values`` (answers kept as given), with ``tool``, ``model``, ``score`` and ``questions``."""
    out = {k: pre[k] for k in ("tool", "model", "score", "questions", "comment", "values") if k in pre}
    if "order" in pre:
        out["ranking"] = [response_ids[i] for i in pre["order"]]
    if "best" in pre:
        out["preferred"] = response_ids[pre["best"]]
    if "choice" in pre:  # tie / both_bad
        out["choice"] = pre["choice"]
    if "ratings" in pre:
        out["ratings"] = {str(response_ids[i]): crit for i, crit in pre["ratings"].items()}
    return out


def _argilla(obj: dict[str, Any], line: int, ext: str) -> ItemSpec:
    """Argilla record export (v2 ``to_list(flatten=False)`` / JSON): text fields become the prompt and
    responses, ``metadata`` is kept, each user's answers (``responses: {question: [{"value",
    "user_id"}]}``: rankings, label choices naming a response, ratings) become one judgement, and
    the model ``suggestions`` (``{question: {"value", "score", "agent"}}``; v1's list of
    ``{"question_name", …}`` too) become candidate responses or pre-annotations."""
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
    suggestions = obj.get("suggestions") or {}
    if isinstance(suggestions, list):  # v1 FeedbackRecord: [{"question_name", "value", "score", "agent"}]
        suggestions = {(s.get("question_name") if isinstance(s, dict) else None) or f"suggestions[{i}]": s
                       for i, s in enumerate(suggestions)}
    if not isinstance(suggestions, dict):
        raise LineError("Argilla 'suggestions' must map each question to {\"value\", \"score\", \"agent\"}")
    for question, sug in suggestions.items():
        if not isinstance(sug, dict) or "value" not in sug:
            raise LineError(f"Argilla suggestion '{question}' must be {{\"value\", \"score\", \"agent\"}}")
        _model_answer(spec, "argilla", sug.get("agent"), sug.get("score"), [(str(question), sug["value"], None)], names)
    return spec


def _ls_given(results: Any, names: list[str], what: str) -> list[tuple[str, Any, str | None]]:
    """Label Studio ``result`` entries as ``(question, value, response field it targets)``:
    ``pairwise`` (selected left / right → the response field), ``rating``, ``ranker``, ``choices``,
    ``textarea``; other result types as their raw ``value``."""
    if not isinstance(results, list):
        raise LineError(f"Label Studio {what} 'result' must be a list")
    given: list[tuple[str, Any, str | None]] = []
    for res in results:
        if not isinstance(res, dict) or not isinstance(res.get("value", {}), dict):
            raise LineError(f"Label Studio {what} result entries must be objects with a 'value' object")
        value, question = res.get("value") or {}, str(res.get("from_name") or res.get("type") or "result")
        if value.get("selected") in ("left", "right") and len(names) == 2:
            given.append((question, names[0 if value["selected"] == "left" else 1], None))
        elif "rating" in value:
            given.append((question, value["rating"], res.get("to_name")))
        elif "ranker" in value:
            ranked = value["ranker"]
            given.append((question, next(iter(ranked.values()), []) if isinstance(ranked, dict) else ranked, None))
        elif isinstance(value.get("choices"), list) and len(value["choices"]) == 1:
            given.append((question, value["choices"][0], None))
        elif isinstance(value.get("text"), list):
            given.append((question, " ".join(map(str, value["text"])), None))
        else:
            given.append((question, value, res.get("to_name")))
    return given


def _label_studio(obj: dict[str, Any], line: int, ext: str) -> ItemSpec:
    """Label Studio task export (JSON): ``data`` text fields become the prompt and responses,
    ``meta`` is kept, every annotation that was not cancelled becomes one judgement of its
    ``completed_by`` user (``pairwise`` selected left/right, ``rating`` — ``to_name`` names the
    response, ``from_name`` the criterion —, ``ranker``, ``choices`` and ``textarea`` results;
    ``lead_time`` becomes the time on task), and each of the ``predictions`` (a model's
    pre-annotation, named by its ``model_version``) becomes candidate responses or a pre-annotation."""
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
        for question, value, target in _ls_given(ann.get("result") or [], names, "annotation"):
            _answer_into(answer, question, value, names, target)
        if isinstance(ann.get("lead_time"), (int, float)) and answer:
            answer["time_on_task_ms"] = int(ann["lead_time"] * 1000)
        if answer:
            spec.annotations.append({"annotator": f"label-studio-{who if who is not None else n}", **answer})
    predictions = obj.get("predictions") or []
    if not isinstance(predictions, list) or not all(isinstance(p, dict) for p in predictions):
        raise LineError("Label Studio 'predictions' must be a list of {\"model_version\", \"score\", \"result\"} "
                        "objects (export the tasks with their predictions, not their ids)")
    for pred in predictions:
        _model_answer(spec, "label_studio", pred.get("model_version"), pred.get("score"),
                      _ls_given(pred.get("result") or [], names, "prediction"), names)
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
        return ItemSpec(line, "kto", messages, ext, {**_meta(obj, ("category",)), **_agreement(obj)}, responses,
                        {"label": obj["label"]})
    if isinstance(obj.get("fields"), dict):  # Argilla
        return _argilla(obj, line, ext)
    if isinstance(obj.get("data"), dict):  # Label Studio
        return _label_studio(obj, line, ext)
    if "messages" in obj and "prompt" not in obj and "responses" not in obj:
        messages = _messages(obj["messages"], "messages")
        if messages[-1]["role"] == "assistant" and len(messages) >= 2:  # SFT conversation
            text = messages[-1]["content"]
            return ItemSpec(line, "sft", messages[:-1], ext, {**_meta(obj, ("category",)), **_agreement(obj)},
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
    if {"model_a", "model_b", "winner"} <= set(obj):
        raise LineError("a battle record holds no prompt or answer texts, so it cannot become an item; "
                        "import the same snapshot's preference export instead")
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
