"""API and page views of the data studio. Views validate and call :mod:`training.datastudio.actions`;
every view declares ``required_role`` (builders; the data stage is theirs)."""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from markdown_it import MarkdownIt
from rest_framework import generics, serializers, status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from studio.errors import StudioAPIError
from studio.roles import BUILDER, role_required
from training.core.config import ConfigError
from training.datastudio import actions
from training.datastudio.serializers import (
    CurationCreateSerializer,
    CurationRunSerializer,
    DataSourceSerializer,
    LSHSerializer,
    PreviewSerializer,
    SourceImportSerializer,
)
from training.launch import log_tail
from training.models.datastudio import DOMAINS, CurationRun, DataSource
from training.views import RunLogView

MAX_UPLOAD_BYTES = 512 * 2**20  # the web server's own cap; the core's SourceLimits apply inside it

# ---- recipes: the default, presets side by side --------------------------------------------------------


def recipe_presets() -> dict[str, dict[str, Any]]:
    """Whole recipes to start from: the default (FineWeb-like) and the rule sets of Gopher, C4 and FineWeb."""
    from training.core.curate import GopherQualityConfig, GopherRepetitionConfig, default_recipe

    base = [{"step": "extract", "config": {}}, {"step": "normalize", "config": {}},
            {"step": "language", "config": {"allowed": ["en"], "threshold": 0.65}}]
    dedup = [{"step": "exact_dedup", "config": {}}, {"step": "near_dedup", "config": {}}]

    def gopher(preset: str) -> list[dict[str, Any]]:
        return [{"step": "gopher_repetition", "config": GopherRepetitionConfig.preset(preset).to_dict()},
                {"step": "gopher_quality", "config": GopherQualityConfig.preset(preset).to_dict()}]

    return {
        "default": {"label": "Default (FineWeb-like: Gopher rules, profanity, PII, dedup)", "recipe": default_recipe()},
        "gopher-datatrove": {"label": "Gopher rules, datatrove thresholds", "recipe": base + gopher("datatrove") + dedup},
        "gopher-dolma": {"label": "Gopher rules, Dolma v1.5 thresholds", "recipe": base + gopher("dolma") + dedup},
        "gopher-nemo": {"label": "Gopher rules, NeMo Curator thresholds", "recipe": base + gopher("nemo") + dedup},
        "c4": {"label": "C4 rules (line and document filters)", "recipe": base + [{"step": "c4", "config": {}}] + dedup},
        "fineweb": {"label": "FineWeb: Gopher + C4 + FineWeb rules",
                    "recipe": base + gopher("datatrove") + [{"step": "c4", "config": {}},
                                                            {"step": "fineweb", "config": {}}] + dedup},
        "light": {"label": "Light: normalize, length, exact and near dedup (keeps code and old prose)",
                  "recipe": [{"step": "normalize", "config": {}}, {"step": "length", "config": {"min_chars": 50}},
                             *dedup]},
    }


def steps_catalog() -> list[dict[str, Any]]:
    """Every step with its default settings and the values it can preview."""
    from training.core.curate import STEP_TYPES

    out = []
    for name, cls in STEP_TYPES.items():
        step = cls(cls.config_class())
        out.append({"step": name, "doc": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
                    "config": step.config.to_dict(), "previews": sorted(step.thresholds())})
    return out


def thresholds_side_by_side() -> dict[str, Any]:
    """Gopher thresholds of datatrove / Dolma / NeMo, and the C4 and FineWeb rule defaults."""
    from training.core.curate import C4Config, FineWebConfig, presets_table

    return {"gopher": presets_table(), "c4": C4Config().to_dict(), "fineweb": FineWebConfig().to_dict()}


class RecipesView(APIView):
    """The default recipe, whole-recipe presets, every step with its defaults, and the Gopher /
    C4 / FineWeb thresholds side by side."""

    required_role = BUILDER

    @extend_schema(responses=inline_serializer("Recipes", {"default": serializers.ListField(),
                                                           "presets": serializers.DictField(),
                                                           "steps": serializers.ListField(),
                                                           "thresholds": serializers.DictField()}))
    def get(self, request):  # noqa: ANN001, ANN201
        from training.core.curate import default_recipe

        return Response({"default": default_recipe(), "presets": recipe_presets(), "steps": steps_catalog(),
                         "thresholds": _json_safe(thresholds_side_by_side())})


class RecipeValidateView(APIView):
    """Validate a recipe: the resolved recipe (every setting explicit) or a 400 naming ``step.field``."""

    required_role = BUILDER

    @extend_schema(request=inline_serializer("RecipeIn", {"recipe": serializers.JSONField()}),
                   responses=inline_serializer("RecipeOut", {"recipe": serializers.ListField()}))
    def post(self, request):  # noqa: ANN001, ANN201
        return Response({"recipe": actions.validate_recipe(request.data.get("recipe"))})


def _json_safe(value: Any) -> Any:
    """Tuples to lists, infinities to None (JSON has neither)."""
    return json.loads(json.dumps(value, default=str).replace("Infinity", "null").replace("NaN", "null"))


def _sample_docs(source_ids: list[int], n: int) -> list[dict[str, Any]]:
    """A uniform random sample of ``n`` documents of the sources (one streaming pass)."""
    from training.core.curate.runner import sample_documents

    sources = list(DataSource.objects.filter(pk__in=source_ids).order_by("id"))
    if len(sources) != len(set(source_ids)):
        raise StudioAPIError(actions.SOURCE_MISSING, "A source does not exist.", actions.HINTS[actions.SOURCE_MISSING],
                             400, {"sources": ["unknown source id"]})
    return sample_documents([str(s.documents_file) for s in sources if s.documents_file.exists()], n)


class PreviewView(APIView):
    """Preview one step's threshold on a random sample of the sources: histogram of the measured
    value and the documents nearest the cut on each side."""

    required_role = BUILDER

    @extend_schema(request=PreviewSerializer, responses=inline_serializer("Preview", {
        "histogram": serializers.DictField(), "cuts": serializers.ListField(), "threshold": serializers.JSONField()}))
    def post(self, request):  # noqa: ANN001, ANN201
        from training.core.curate import build_step, preview

        form = PreviewSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        d = form.validated_data
        item = d["step"]
        if not isinstance(item, dict):
            raise StudioAPIError(actions.RECIPE_INVALID, "step must be {\"step\": name, \"config\": {…}}.",
                                 actions.HINTS[actions.RECIPE_INVALID], 400, {"step": ["an object"]})
        try:
            step = build_step(item)
        except ConfigError as e:
            raise StudioAPIError(actions.RECIPE_INVALID, f"step.{e.field}: {e.message}", e.hint, 400,
                                 {f"step.{e.field}": [e.message]}) from None
        docs = _sample_docs(d["sources"], d["sample"])
        if not docs:
            raise StudioAPIError(actions.SOURCE_MISSING, "The sources hold no documents to preview.",
                                 actions.HINTS[actions.SOURCE_MISSING], 400, {"sources": ["no documents"]})
        try:
            result = preview(step, docs, d["value_field"], bins=d["bins"])
        except ConfigError as e:
            raise StudioAPIError(actions.RECIPE_INVALID, f"{e.field}: {e.message}", e.hint, 400,
                                 {e.field: [e.message + (f" — {e.hint}" if e.hint else "")]}) from None
        return Response(_json_safe(result))


class LSHView(APIView):
    """The LSH S-curve for ``bands`` × ``rows`` (probability that a pair of similarity s becomes a
    candidate), the false positive / negative areas around ``threshold``, and optionally the
    (bands, rows) that minimise them for ``optimal_for`` hash functions."""

    required_role = BUILDER

    @extend_schema(parameters=[OpenApiParameter("bands", int), OpenApiParameter("rows", int),
                               OpenApiParameter("threshold", float), OpenApiParameter("optimal_for", int)],
                   responses=inline_serializer("SCurve", {"similarity": serializers.ListField(),
                                                          "probability": serializers.ListField()}))
    def get(self, request):  # noqa: ANN001, ANN201
        from training.core.curate import optimal_params, s_curve

        form = LSHSerializer(data=request.query_params)
        form.is_valid(raise_exception=True)
        d = form.validated_data
        if d["bands"] * d["rows"] > 4096:
            raise StudioAPIError("invalid", "bands × rows must be at most 4096 hash functions.",
                                 "MinHash with a few hundred hash functions is usual (datatrove: 14 × 8).", 400,
                                 {"rows": ["bands × rows ≤ 4096"]})
        out = s_curve(d["bands"], d["rows"], threshold=d["threshold"])
        if d.get("optimal_for"):
            b, r = optimal_params(d["threshold"], d["optimal_for"])
            out["optimal"] = {"num_perm": d["optimal_for"], "bands": b, "rows": r,
                              **{k: v for k, v in s_curve(b, r, threshold=d["threshold"]).items()
                                 if k in ("knee", "false_positive_area", "false_negative_area")}}
        return Response(out)


# ---- sources ----------------------------------------------------------------------------------------------


class SourceListView(generics.ListCreateAPIView):
    """Imported sources. POST imports one: multipart with ``kind=upload`` and ``file``, or JSON with
    ``kind`` url / folder / corpus; ``domain``, ``language``, ``licence`` are recorded."""

    required_role = BUILDER
    serializer_class = DataSourceSerializer
    queryset = DataSource.objects.all()
    parser_classes = [JSONParser, MultiPartParser, FormParser]

    @extend_schema(request={"multipart/form-data": SourceImportSerializer, "application/json": SourceImportSerializer},
                   responses={201: DataSourceSerializer})
    def post(self, request, *args, **kwargs):  # noqa: ANN001, ANN201
        form = SourceImportSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        d = form.validated_data
        upload = d.get("file")
        if d["kind"] == "upload" and upload is not None and upload.size > MAX_UPLOAD_BYTES:
            raise StudioAPIError("file_too_large", f"{upload.name} is larger than {MAX_UPLOAD_BYTES >> 20} MiB.",
                                 "Split it, or put it in a folder on the server and import the folder.", 413,
                                 {"file": ["too large"]})
        src = actions.import_source(
            request.user, d["kind"], name=d.get("name", ""), domain=d.get("domain", ""),
            language=d.get("language", ""), licence=d.get("licence", ""),
            filename=upload.name if upload is not None else "", content=upload.read() if upload is not None else None,
            url=d.get("url", ""), path=d.get("path", ""), corpus=d.get("corpus", ""), on_error=d["on_error"])
        return Response(DataSourceSerializer(src).data, status=status.HTTP_201_CREATED)


class SourceDetailView(generics.RetrieveDestroyAPIView):
    """One source; DELETE removes a source no curation run used."""

    required_role = BUILDER
    serializer_class = DataSourceSerializer
    queryset = DataSource.objects.all()

    def perform_destroy(self, instance: DataSource) -> None:
        actions.delete_source(self.request.user, instance)


class CorporaView(APIView):
    """The built-in corpora that can be imported (fetched from package registries)."""

    required_role = BUILDER

    @extend_schema(responses=inline_serializer("Corpora", {"corpora": serializers.ListField()}))
    def get(self, request):  # noqa: ANN001, ANN201
        from training.core.curate.sources import corpus_catalog

        return Response({"corpora": corpus_catalog()})


# ---- curation runs ----------------------------------------------------------------------------------------


class CurationListView(generics.ListCreateAPIView):
    """Curation runs. POST creates and queues one over ``sources`` with ``recipe`` (default if empty)."""

    required_role = BUILDER
    serializer_class = CurationRunSerializer
    queryset = CurationRun.objects.prefetch_related("sources")

    @extend_schema(request=CurationCreateSerializer, responses={201: CurationRunSerializer})
    def post(self, request, *args, **kwargs):  # noqa: ANN001, ANN201
        form = CurationCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        d = form.validated_data
        run = actions.do_create_curation(request.user, name=d.get("name", ""), recipe=d.get("recipe") or None,
                                         sources=d["sources"], workers=d["workers"], shard_docs=d["shard_docs"],
                                         output_format=d["output_format"])
        return Response(CurationRunSerializer(run).data, status=status.HTTP_201_CREATED)


class CurationDetailView(generics.RetrieveAPIView):
    required_role = BUILDER
    serializer_class = CurationRunSerializer
    queryset = CurationRun.objects.prefetch_related("sources")


class _CurationAction(APIView):
    required_role = BUILDER

    def act(self, run: CurationRun, user: Any) -> CurationRun:
        raise NotImplementedError

    @extend_schema(request=None, responses={200: CurationRunSerializer})
    def post(self, request, pk: int):  # noqa: ANN001, ANN201
        run = self.act(get_object_or_404(CurationRun, pk=pk), request.user)
        return Response(CurationRunSerializer(CurationRun.objects.get(pk=run.pk)).data)


class CurationCancelView(_CurationAction):
    """Stop a curation run: finished shards are kept, so it can be resumed."""

    def act(self, run: CurationRun, user: Any) -> CurationRun:
        return actions.do_cancel_curation(run, user)


class CurationResumeView(_CurationAction):
    """Queue a cancelled, interrupted or failed run again; it continues after its last finished shard."""

    def act(self, run: CurationRun, user: Any) -> CurationRun:
        return actions.do_resume_curation(run, user)


def run_report(run: CurationRun) -> dict[str, Any] | None:
    """The run's report (per-step statistics, examples by rule, composition), once it succeeded."""
    path = actions.version_dir(run) / "report.json"
    if run.status != "succeeded" or not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _need_report(run: CurationRun) -> dict[str, Any]:
    report = run_report(run)
    if report is None:
        raise StudioAPIError("curation_not_finished", f"Curation run {run.pk} is {run.status}; the audit and the "
                                                      "datasheet exist once it succeeded.",
                             "Wait for the run to finish (or resume it).", 409)
    return report


class CurationReportView(APIView):
    """The audit of a succeeded run: per step, documents / words / characters in and out, % removed,
    counts by rule, and kept and removed examples per rule."""

    required_role = BUILDER

    @extend_schema(responses=inline_serializer("CurationReport", {"steps": serializers.ListField()}))
    def get(self, request, pk: int):  # noqa: ANN001, ANN201
        return Response(_need_report(get_object_or_404(CurationRun, pk=pk)))


def _page(request, rows: Any) -> dict[str, Any]:  # noqa: ANN001
    """One page (``?offset=&limit=``, at most 500) of an iterator: ``{offset, limit, results, next_offset}``."""
    from itertools import islice

    params = request.query_params
    for key in ("offset", "limit"):
        if params.get(key) and not params[key].isdigit():
            raise StudioAPIError("invalid", f"'{key}' must be a non-negative integer.", "e.g. ?offset=0&limit=50", 400,
                                 {key: ["a non-negative integer"]})
    offset, limit = int(params.get("offset") or 0), min(max(int(params.get("limit") or 50), 1), 500)
    results = list(islice(rows, offset, offset + limit + 1))
    return {"offset": offset, "limit": limit, "results": results[:limit],
            "next_offset": offset + limit if len(results) > limit else None}


def _texts_of(run: CurationRun, ids: set[str], max_chars: int = 600) -> dict[str, str]:
    """The input text of the documents ``ids`` (one streaming pass over the run's sources)."""
    found: dict[str, str] = {}
    for src in run.sources.order_by("id"):
        if len(found) == len(ids):
            break
        if not src.documents_file.exists():
            continue
        with open(src.documents_file, encoding="utf-8") as f:
            for line in f:
                doc = json.loads(line)
                if str(doc.get("id")) in ids:
                    found[str(doc["id"])] = doc["text"][:max_chars]
    return found


class CurationDecisionsView(APIView):
    """The audit trail of a succeeded run, page by page: every drop or change with its step, rule,
    measured value and threshold (``?step=``, ``?rule=``), with the document's input text."""

    required_role = BUILDER

    @extend_schema(parameters=[OpenApiParameter("step", str), OpenApiParameter("rule", str),
                               OpenApiParameter("offset", int), OpenApiParameter("limit", int)],
                   responses=inline_serializer("Decisions", {"results": serializers.ListField(),
                                                             "next_offset": serializers.IntegerField()}))
    def get(self, request, pk: int):  # noqa: ANN001, ANN201
        from training.core.curate.runner import iter_decisions

        run = get_object_or_404(CurationRun, pk=pk)
        _need_report(run)
        page = _page(request, iter_decisions(actions.version_dir(run), rule=request.query_params.get("rule") or None,
                                             step=request.query_params.get("step") or None))
        texts = _texts_of(run, {str(r["doc_id"]) for r in page["results"]})
        page["results"] = [{**r, "text": texts.get(str(r["doc_id"]))} for r in page["results"]]
        return Response(_json_safe(page))


class CurationDocumentsView(APIView):
    """The kept documents of a succeeded run's dataset version, page by page."""

    required_role = BUILDER

    @extend_schema(parameters=[OpenApiParameter("offset", int), OpenApiParameter("limit", int)],
                   responses=inline_serializer("VersionDocuments", {"results": serializers.ListField(),
                                                                    "next_offset": serializers.IntegerField()}))
    def get(self, request, pk: int):  # noqa: ANN001, ANN201
        from training.core.curate.runner import iter_version_documents

        run = get_object_or_404(CurationRun, pk=pk)
        _need_report(run)
        return Response(_json_safe(_page(request, iter_version_documents(actions.version_dir(run)))))


def datasheet_for(run: CurationRun) -> str:
    """The datasheet (Markdown) of a succeeded run: the one the core generated from the version's
    records when it finished (or generated again from them when it is missing)."""
    from training.core.curate.datasheet import datasheet_markdown

    report = _need_report(run)
    folder = actions.version_dir(run)
    if (folder / "datasheet.md").exists():
        return (folder / "datasheet.md").read_text(encoding="utf-8")
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    return datasheet_markdown(manifest, report, [s.as_record() for s in run.sources.order_by("id")])


class CurationDatasheetView(APIView):
    """The datasheet as Markdown: JSON ``{"markdown": …}``, or the file with ``?download=1``."""

    required_role = BUILDER

    @extend_schema(parameters=[OpenApiParameter("download", bool)],
                   responses=inline_serializer("Datasheet", {"markdown": serializers.CharField()}))
    def get(self, request, pk: int):  # noqa: ANN001, ANN201
        run = get_object_or_404(CurationRun, pk=pk)
        text = datasheet_for(run)
        if request.query_params.get("download"):
            resp = HttpResponse(text, content_type="text/markdown; charset=utf-8")
            resp["Content-Disposition"] = f'attachment; filename="datasheet-curation-{run.pk}.md"'
            return resp
        return Response({"markdown": text})


class CurationLogView(RunLogView):
    """The last lines of a curation run's log."""

    model = CurationRun
    max_bytes = 400_000


# ---- pages ------------------------------------------------------------------------------------------------

_markdown = MarkdownIt("commonmark", {"html": False}).enable("table")


def _stage() -> Any:
    from frontend.stages import BY_SLUG

    return BY_SLUG["data"]


@role_required(BUILDER)
def data_page(request: HttpRequest) -> HttpResponse:
    """Sources (import forms), curation runs, and a new run with a preset recipe."""
    from training.core.curate.sources import corpus_catalog

    presets = recipe_presets()
    return render(request, "training/datastudio/data.html", {
        "stage": _stage(), "sources": DataSource.objects.all()[:200],
        "runs": CurationRun.objects.select_related("dataset").all()[:100], "corpora": corpus_catalog(),
        "domains": DOMAINS, "presets": [(k, v["label"]) for k, v in presets.items()],
    })


@role_required(BUILDER)
def recipe_page(request: HttpRequest) -> HttpResponse:
    """Recipe editor: presets, thresholds side by side, threshold preview, LSH calculator."""
    from training.core.curate import default_recipe

    return render(request, "training/datastudio/recipe.html", {
        "stage": _stage(), "sources": DataSource.objects.all()[:200], "default_recipe": default_recipe(),
        "presets": recipe_presets(), "steps": steps_catalog(), "thresholds": _json_safe(thresholds_side_by_side()),
    })


@role_required(BUILDER)
def curation_page(request: HttpRequest, pk: int) -> HttpResponse:
    """A run: live progress while it goes, the audit (per-step statistics, examples by rule) after."""
    from studio.models import Event

    run = get_object_or_404(CurationRun.objects.select_related("dataset"), pk=pk)
    last_event = Event.objects.filter(group=run.group).order_by("-id").values_list("id", flat=True).first() or 0
    return render(request, "training/datastudio/run.html", {
        "stage": _stage(), "run": run, "sources": run.sources.all(), "report": run_report(run),
        "last_event": last_event, "recipe_json": json.dumps(run.recipe, indent=2),
        "log": log_tail(run.log_path, 60) if run.status == "failed" else "",
    })


@role_required(BUILDER)
def datasheet_page(request: HttpRequest, pk: int) -> HttpResponse:
    """The datasheet rendered from Markdown (raw HTML in it is escaped, not interpreted)."""
    run = get_object_or_404(CurationRun, pk=pk)
    try:
        text = datasheet_for(run)
    except StudioAPIError as e:
        return render(request, "training/datastudio/datasheet.html", {"stage": _stage(), "run": run,
                                                                        "error": str(e.detail)}, status=409)
    return render(request, "training/datastudio/datasheet.html", {
        "stage": _stage(), "run": run, "html": _markdown.render(text)})
