"""Labeling API views and pages. Views validate and call :mod:`labeling.actions`; every view
declares ``required_role``; actions that need a higher role than reading check it explicitly."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from markdown_it import MarkdownIt
from rest_framework import generics, serializers, status
from rest_framework.response import Response as APIResponse
from rest_framework.views import APIView

from labeling import actions, export, stats, suggestions
from labeling.models import (
    BIAS_KINDS,
    PRE_ANNOTATION_MODES,
    REPORT_CATEGORIES,
    REPORT_STATUSES,
    SEVERITIES,
    Assignment,
    Judgement,
    Project,
    Report,
    Snapshot,
)
from labeling.serializers import (
    AssignmentSerializer,
    ImportRequestSerializer,
    ImportResultSerializer,
    JudgementEditSerializer,
    JudgementInputSerializer,
    JudgementSerializer,
    ProjectSerializer,
    ReportActionSerializer,
    ReportInputSerializer,
    ReportSerializer,
    SnapshotCreateSerializer,
    SnapshotSerializer,
    SuggestionsSerializer,
)
from studio.errors import StudioAPIError
from studio.roles import ANNOTATOR, BUILDER, MODERATOR, SIGNED_IN, has_access, role_required

_markdown = MarkdownIt("commonmark", {"html": False}).enable("table")


def render_guidelines(text: str) -> str:
    """Guidelines Markdown → HTML. Raw HTML in the source is escaped, not rendered; headings move
    down two levels (# → h3) so the page keeps one h1 and its own h2 sections."""
    env: dict = {}
    tokens = _markdown.parse(text or "", env)
    for tok in tokens:
        if tok.type in ("heading_open", "heading_close"):
            tok.tag = f"h{min(int(tok.tag[1]) + 2, 6)}"
    return _markdown.renderer.render(tokens, _markdown.options, env)


def _require(request: Any, level: str, what: str) -> None:
    if not has_access(request.user, level):
        raise StudioAPIError("permission_denied", f"{what} needs the {level} role.",
                             "Ask a builder to give your account that role.", status_code=403)


def _project(pk: int, user: Any) -> Project:
    project = get_object_or_404(Project, pk=pk)
    if project.archived and not has_access(user, BUILDER):
        raise StudioAPIError("not_found", f"No project {pk}.", status_code=404)
    return project


# ---- projects ----------------------------------------------------------------------------------

class ProjectListView(generics.ListCreateAPIView):
    """Labeling projects (annotators see active ones). POST creates one (builders)."""

    required_role = ANNOTATOR
    serializer_class = ProjectSerializer

    def get_queryset(self):  # noqa: ANN201
        qs = Project.objects.all()
        return qs if has_access(self.request.user, BUILDER) else qs.filter(archived=False)

    def create(self, request, *args, **kwargs):  # noqa: ANN001, ANN201
        _require(request, BUILDER, "Creating a project")
        form = ProjectSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        project = actions.create_project(request.user, **form.validated_data)
        return APIResponse(ProjectSerializer(project).data, status=status.HTTP_201_CREATED)


class ProjectDetailView(generics.RetrieveUpdateAPIView):
    """One project; PATCH changes its settings (builders). New guidelines bump their version."""

    required_role = ANNOTATOR
    serializer_class = ProjectSerializer
    http_method_names = ["get", "patch", "head", "options"]

    def get_object(self):  # noqa: ANN201
        return _project(self.kwargs["pk"], self.request.user)

    def update(self, request, *args, **kwargs):  # noqa: ANN001, ANN201
        _require(request, BUILDER, "Changing a project")
        project = self.get_object()
        form = ProjectSerializer(project, data=request.data, partial=True)
        form.is_valid(raise_exception=True)
        project = actions.update_project(project, request.user, **form.validated_data)
        return APIResponse(ProjectSerializer(project).data)


class ProjectImportView(APIView):
    """Bulk import from JSONL: prompts (with or without responses), items, preference / KTO / SFT
    records, Argilla and Label Studio exports. Bad lines are listed with their numbers; with
    ``on_error=refuse`` (default) nothing is stored when any line is bad."""

    required_role = BUILDER

    @extend_schema(request=ImportRequestSerializer, responses={201: ImportResultSerializer, 400: OpenApiTypes.OBJECT})
    def post(self, request, pk: int):  # noqa: ANN001, ANN201
        project = _project(pk, request.user)
        upload = request.FILES.get("file") if hasattr(request, "FILES") else None
        if upload is not None:
            data = {"jsonl": upload.read().decode("utf-8", errors="replace"),
                    "on_error": request.data.get("on_error", "refuse")}
        else:
            data = request.data
        form = ImportRequestSerializer(data=data)
        form.is_valid(raise_exception=True)
        try:
            result = actions.import_jsonl(project, request.user, form.validated_data["jsonl"],
                                          on_error=form.validated_data["on_error"])
        except actions.ImportRefused as e:
            return APIResponse({"code": e.error_code, "detail": str(e.detail), "hint": e.hint, "errors": e.errors,
                                "stored": False}, status=400)
        return APIResponse(result.as_dict(), status=status.HTTP_201_CREATED)


class GenerateView(APIView):
    """Queue candidate generation: ``k`` sampled answers per prompt (those with no responses, or
    ``prompt_ids``) from each model (``{"path", "name"}``: a checkpoint, run folder, export,
    Hugging Face folder, .gguf, or ``smollm2``). Progress arrives as project events."""

    required_role = BUILDER

    @extend_schema(request=inline_serializer("GenerateRequest", {
        "models": serializers.ListField(child=serializers.DictField()),
        "k": serializers.IntegerField(required=False, default=2),
        "max_new_tokens": serializers.IntegerField(required=False, default=128),
        "temperature": serializers.FloatField(required=False, default=0.8),
        "top_p": serializers.FloatField(required=False, allow_null=True),
        "seed": serializers.IntegerField(required=False, default=0),
        "prompt_ids": serializers.ListField(child=serializers.IntegerField(), required=False)}),
        responses={202: OpenApiTypes.OBJECT})
    def post(self, request, pk: int):  # noqa: ANN001, ANN201
        project = _project(pk, request.user)
        data = request.data if isinstance(request.data, dict) else {}
        models = data.get("models")
        if not isinstance(models, list):
            raise StudioAPIError("invalid", "models: a list of {\"path\", \"name\"}", fields={"models": ["required"]})
        options = {k: data.get(k) for k in actions.GENERATION_OPTIONS}
        return APIResponse(actions.request_candidates(project, request.user, models, **options), status=202)


class ProjectProgressView(APIView):
    """Progress of the project and of the signed-in annotator."""

    required_role = ANNOTATOR

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, pk: int):  # noqa: ANN001, ANN201
        project = _project(pk, request.user)
        return APIResponse({"project": stats.project_progress(project), "me": stats.my_progress(project, request.user)})


class ProjectQualityView(APIView):
    """Krippendorff's α, per-annotator agreement / gold accuracy / position and length bias / speed
    flags, the adjudication queue (lowest agreement first) and the Bradley–Terry model leaderboard."""

    required_role = BUILDER

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, pk: int):  # noqa: ANN001, ANN201
        return APIResponse(stats.quality_report(_project(pk, request.user)))


class NextItemView(APIView):
    """Lock the next item for you (or return your current lock). 200 with the task, or 200 with
    ``{"assignment": null, "reason", "detail"}`` when there is nothing to do. (Served by
    :mod:`labeling.lean` when the request is a plain signed-in JSON call; this view answers the rest
    with the same code.)"""

    required_role = ANNOTATOR

    @extend_schema(request=None, responses={200: AssignmentSerializer})
    def post(self, request, pk: int):  # noqa: ANN001, ANN201
        return APIResponse(actions.next_or_reason(_project(pk, request.user), request.user))


class SkipView(APIView):
    """Give your locked item back; it will not be offered to you again."""

    required_role = ANNOTATOR

    @extend_schema(request=None, responses={200: OpenApiTypes.OBJECT})
    def post(self, request, pk: int):  # noqa: ANN001, ANN201
        a = get_object_or_404(Assignment, pk=pk)
        a = actions.skip_assignment(a, request.user)
        return APIResponse({"assignment": a.pk, "status": a.status})


class ExtendLockView(APIView):
    """Extend your lock on an item to now + the project's lock time (the annotator page calls this
    while you work). Refused for someone else's item, an expired or finished lock, or a lock held
    for longer than six lock times."""

    required_role = ANNOTATOR

    @extend_schema(request=None, responses={200: inline_serializer("ExtendedLock", {
        "assignment": serializers.IntegerField(), "expires_at": serializers.DateTimeField(),
        "lock_ttl_seconds": serializers.IntegerField()})})
    def post(self, request, pk: int):  # noqa: ANN001, ANN201
        a = actions.extend_lock(get_object_or_404(Assignment, pk=pk), request.user)
        return APIResponse({"assignment": a.pk, "expires_at": a.expires_at.isoformat(),
                            "lock_ttl_seconds": a.project.lock_ttl_seconds})


class SuggestionsView(APIView):
    """The imported models' pre-annotations (Argilla suggestions, Label Studio predictions) of the
    item locked for you, in this task's terms (its answer labels and response ids). Empty when the
    project keeps them hidden; ``prefill`` (the answer to start the form from) only when it
    pre-fills. Refused for someone else's item (403), a finished assignment or an expired lock (409)."""

    required_role = ANNOTATOR

    @extend_schema(request=None, responses={200: SuggestionsSerializer})
    def get(self, request, pk: int):  # noqa: ANN001, ANN201
        return APIResponse(suggestions.for_assignment(get_object_or_404(Assignment, pk=pk), request.user))


class JudgementListView(generics.ListCreateAPIView):
    """Your judgements (``?project=<id>``). POST records one for an item locked for you; the same
    ``client_token`` again returns the stored judgement with 200 instead of 201."""

    required_role = ANNOTATOR
    serializer_class = JudgementSerializer

    def get_queryset(self):  # noqa: ANN201
        qs = Judgement.objects.filter(annotator=self.request.user, imported=False).order_by("-id")
        project = self.request.query_params.get("project")
        if project is not None:
            if not project.isdigit():
                raise StudioAPIError("invalid", "'project' must be a project id.")
            qs = qs.filter(project_id=int(project))
        return qs

    @extend_schema(request=JudgementInputSerializer, responses={201: JudgementSerializer, 200: JudgementSerializer})
    def post(self, request, *args, **kwargs):  # noqa: ANN001, ANN201
        form = JudgementInputSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        body, created = actions.submit_judgement(request.user, form.validated_data)
        return APIResponse(body, status=201 if created else 200)


class JudgementDetailView(APIView):
    """One of your judgements; PATCH edits it within the project's edit window."""

    required_role = ANNOTATOR

    def _get(self, request: Any, pk: int) -> Judgement:
        return get_object_or_404(Judgement, pk=pk, annotator=request.user)

    @extend_schema(responses=JudgementSerializer)
    def get(self, request, pk: int):  # noqa: ANN001, ANN201
        return APIResponse(JudgementSerializer(self._get(request, pk)).data)

    @extend_schema(request=JudgementEditSerializer, responses=JudgementSerializer)
    def patch(self, request, pk: int):  # noqa: ANN001, ANN201
        form = JudgementEditSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        j = actions.edit_judgement(self._get(request, pk), request.user, dict(form.validated_data))
        return APIResponse(JudgementSerializer(j).data)


# ---- reports -----------------------------------------------------------------------------------

class ReportListView(generics.ListCreateAPIView):
    """Reports: moderators see all (``?status=open``), others their own. Anyone signed in may report."""

    required_role = SIGNED_IN
    serializer_class = ReportSerializer

    def get_queryset(self):  # noqa: ANN201
        qs = Report.objects.select_related("reporter", "moderator")
        if not has_access(self.request.user, MODERATOR):
            qs = qs.filter(reporter=self.request.user)
        wanted = self.request.query_params.get("status")
        if wanted:
            if wanted not in dict(REPORT_STATUSES):
                raise StudioAPIError("invalid", f"'status' must be one of {', '.join(dict(REPORT_STATUSES))}.")
            qs = qs.filter(status=wanted)
        return qs

    @extend_schema(request=ReportInputSerializer, responses={201: ReportSerializer})
    def post(self, request, *args, **kwargs):  # noqa: ANN001, ANN201
        form = ReportInputSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = dict(form.validated_data)
        if (data.get("response") or data.get("item") or data.get("project")) and not has_access(request.user, ANNOTATOR):
            # items and responses are labeling data: only annotators may point at them (and copy their text)
            raise StudioAPIError("permission_denied", "Only annotators may report labeling items by id.",
                                 "Send the answer itself as 'response_text' (and 'prompt_messages').", status_code=403)
        report = actions.create_report(request.user, data)
        return APIResponse(ReportSerializer(report).data, status=status.HTTP_201_CREATED)


class ReportDetailView(generics.RetrieveAPIView):
    required_role = SIGNED_IN
    serializer_class = ReportSerializer

    def get_queryset(self):  # noqa: ANN201
        qs = Report.objects.all()
        return qs if has_access(self.request.user, MODERATOR) else qs.filter(reporter=self.request.user)


class ReportActionView(APIView):
    """Moderation: ``triage`` (open → triaged), ``resolve`` (with an optional corrected answer, which
    becomes a preference pair and a KTO negative in the next snapshot) or ``dismiss``."""

    required_role = MODERATOR
    action_name = "triage"

    @extend_schema(request=ReportActionSerializer, responses=ReportSerializer)
    def post(self, request, pk: int):  # noqa: ANN001, ANN201
        report = get_object_or_404(Report, pk=pk)
        form = ReportActionSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        d = form.validated_data
        if self.action_name == "triage":
            report = actions.triage_report(report, request.user, d.get("note", ""), d.get("severity"))
        elif self.action_name == "resolve":
            report = actions.resolve_report(report, request.user, d.get("corrected_text", ""), d.get("note", ""))
        else:
            report = actions.dismiss_report(report, request.user, d.get("note", ""))
        return APIResponse(ReportSerializer(report).data)


# ---- snapshots and exports ---------------------------------------------------------------------

class SnapshotListView(generics.ListCreateAPIView):
    """Immutable, versioned snapshots (``?project=<id>``; ``?project=none`` for report corrections
    outside projects). POST ``{"project": id|null, "note"}`` freezes the next version."""

    required_role = BUILDER
    serializer_class = SnapshotSerializer

    def get_queryset(self):  # noqa: ANN201
        qs = Snapshot.objects.select_related("project")
        project = self.request.query_params.get("project")
        if project == "none":
            qs = qs.filter(project__isnull=True)
        elif project is not None:
            if not project.isdigit():
                raise StudioAPIError("invalid", "'project' must be a project id or 'none'.")
            qs = qs.filter(project_id=int(project))
        return qs

    @extend_schema(request=inline_serializer("SnapshotCreate", {
        "project": serializers.IntegerField(allow_null=True), "note": serializers.CharField(required=False)}),
        responses={201: SnapshotSerializer})
    def post(self, request, *args, **kwargs):  # noqa: ANN001, ANN201
        form = SnapshotCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        pid = request.data.get("project")
        project = None
        if pid is not None:
            if not isinstance(pid, int) and not (isinstance(pid, str) and pid.isdigit()):
                raise StudioAPIError("invalid", "'project' must be a project id or null.", fields={"project": ["id or null"]})
            project = _project(int(pid), request.user)
        snap = actions.create_snapshot(request.user, project, form.validated_data["note"])
        return APIResponse(SnapshotSerializer(snap).data, status=status.HTTP_201_CREATED)


class SnapshotDetailView(generics.RetrieveAPIView):
    required_role = BUILDER
    serializer_class = SnapshotSerializer
    queryset = Snapshot.objects.select_related("project")


EXPORT_FILES = ("jsonl", "parquet", "json")


class SnapshotExportView(APIView):
    """Training records from a snapshot: ``kind`` (preference, preference_conversational, kto,
    kto_conversational, sft, battles), ``file`` (jsonl, parquet, or json for the records inline),
    ``aggregate`` (majority or all), ``margin`` (1 adds the preference margin)."""

    required_role = BUILDER

    @extend_schema(parameters=[
        OpenApiParameter("kind", str, enum=sorted(export.FORMATS), default="preference",
                         description="record format ('format' is reserved by the API for content negotiation)"),
        OpenApiParameter("file", str, enum=list(EXPORT_FILES), default="jsonl"),
        OpenApiParameter("aggregate", str, enum=["majority", "all"], default="majority"),
        OpenApiParameter("margin", bool, default=False),
    ], responses={200: OpenApiResponse(description="JSONL or Parquet file, or JSON records")})
    def get(self, request, pk: int):  # noqa: ANN001, ANN201
        snap = get_object_or_404(Snapshot, pk=pk)
        q = request.query_params
        fmt, kind, aggregate = q.get("kind", "preference"), q.get("file", "jsonl"), q.get("aggregate", "majority")
        if fmt not in export.FORMATS:
            raise StudioAPIError("invalid", f"unknown format {fmt!r}", f"Use one of {', '.join(sorted(export.FORMATS))}.")
        if kind not in EXPORT_FILES:
            raise StudioAPIError("invalid", f"unknown file type {kind!r}", "Use jsonl, parquet or json.")
        if aggregate not in ("majority", "all"):
            raise StudioAPIError("invalid", "aggregate must be 'majority' or 'all'")
        rows = export.records(snap.payload, fmt, aggregate=aggregate, margin=q.get("margin") in ("1", "true"))
        if kind == "json":
            return APIResponse({"snapshot": snap.label, "content_sha256": snap.content_sha256, "format": fmt,
                                "records": rows})
        name = f"{snap.label.replace('@', '-').replace(' ', '_')}-{fmt}.{kind}"
        if kind == "parquet":
            body, ctype = export.parquet_bytes(rows), "application/vnd.apache.parquet"
        else:
            body, ctype = export.jsonl_bytes(rows), "application/jsonl"
        resp = HttpResponse(body, content_type=ctype)
        resp["Content-Disposition"] = f'attachment; filename="{name}"'
        resp["X-Snapshot"] = snap.label
        resp["X-Snapshot-SHA256"] = snap.content_sha256
        return resp


# ---- pages -------------------------------------------------------------------------------------

@role_required(ANNOTATOR)
def labeling_home(request: HttpRequest) -> HttpResponse:
    is_builder = has_access(request.user, BUILDER)
    projects = Project.objects.all() if is_builder else Project.objects.filter(archived=False)
    rows = [{"project": p, "progress": stats.project_progress(p), "me": stats.my_progress(p, request.user)}
            for p in projects]
    return render(request, "labeling/home.html", {"rows": rows, "is_builder": is_builder,
                                                  "task_types": Project._meta.get_field("task_type").choices,
                                                  "pre_annotation_modes": PRE_ANNOTATION_MODES,
                                                  "stage": _stage("labeling")})


def _stage(slug: str) -> Any:
    from frontend.stages import BY_SLUG

    return BY_SLUG[slug]


@role_required(ANNOTATOR)
def annotate(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk, archived=False)
    return render(request, "labeling/annotate.html", {
        "project": project, "guidelines_html": render_guidelines(project.guidelines),
        "me": stats.my_progress(project, request.user), "progress": stats.project_progress(project),
        "categories": REPORT_CATEGORIES, "bias_kinds": BIAS_KINDS, "severities": SEVERITIES,
        "stage": _stage("labeling")})


@role_required(BUILDER)
def manage(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    last = project.snapshots.order_by("-id").first()
    from studio.models import Event

    last_event = Event.objects.filter(group=project.event_group).order_by("-id").values_list("id", flat=True).first()
    return render(request, "labeling/manage.html", {
        "project": project, "guidelines_html": render_guidelines(project.guidelines),
        "snapshots": project.snapshots.order_by("-version"), "last_snapshot": last,
        "formats": sorted(export.FORMATS), "last_event_id": last_event or 0,
        "pre_annotation_modes": PRE_ANNOTATION_MODES, "stage": _stage("labeling")})


@role_required(MODERATOR)
def reports_page(request: HttpRequest) -> HttpResponse:
    wanted = request.GET.get("status", "open")
    qs = Report.objects.select_related("reporter", "moderator")
    if wanted in dict(REPORT_STATUSES):
        qs = qs.filter(status=wanted)
    else:
        wanted = "all"
    counts = {s: Report.objects.filter(status=s).count() for s, _ in REPORT_STATUSES}
    return render(request, "labeling/reports.html", {
        "reports": qs.order_by("-id")[:200], "status": wanted,
        "statuses": [(s, label, counts[s]) for s, label in REPORT_STATUSES],
        "stage": _stage("reports"), "severities": SEVERITIES})
