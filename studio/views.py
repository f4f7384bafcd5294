"""Studio-wide API views. Views validate and call actions; every view declares ``required_role``."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from studio import actions
from studio.errors import StudioAPIError, error_body
from studio.health import health_report
from studio.models import ApiToken, Event
from studio.roles import BUILDER, PUBLIC, SIGNED_IN, role_required
from studio.serializers import (
    ApiTokenCreatedSerializer,
    ApiTokenCreateSerializer,
    ApiTokenSerializer,
    EventSerializer,
    MeSerializer,
)


@role_required(PUBLIC)
def healthz(request: HttpRequest) -> JsonResponse:
    """Database, queue and channel-layer status as JSON (200 when all are up, else 503)."""
    report = health_report()
    return JsonResponse(report, status=200 if report["status"] == "ok" else 503)


@role_required(PUBLIC)
def api_not_found(request: HttpRequest) -> JsonResponse:
    return JsonResponse(error_body("not_found", f"No API endpoint at {request.path}.",
                                   "See /api/docs/ for the list of endpoints."), status=404)


class MeView(APIView):
    required_role = SIGNED_IN

    @extend_schema(responses=MeSerializer, summary="The signed-in user and their roles")
    def get(self, request):  # noqa: ANN001, ANN201
        return Response(MeSerializer(request.user).data)


class ApiTokenListView(generics.ListCreateAPIView):
    """Your API tokens. Creating one returns its key once; only a hash is stored."""

    required_role = SIGNED_IN
    serializer_class = ApiTokenSerializer

    def get_queryset(self):  # noqa: ANN201
        return ApiToken.objects.filter(user=self.request.user)

    @extend_schema(request=ApiTokenCreateSerializer, responses={201: ApiTokenCreatedSerializer})
    def post(self, request, *args, **kwargs):  # noqa: ANN001, ANN201
        form = ApiTokenCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        token, key = actions.do_create_api_token(request.user, form.validated_data["name"])
        data = ApiTokenSerializer(token).data | {"key": key}
        return Response(data, status=status.HTTP_201_CREATED)


class ApiTokenDetailView(generics.RetrieveDestroyAPIView):
    """One of your tokens; DELETE revokes it (the record stays for the audit trail)."""

    required_role = SIGNED_IN
    serializer_class = ApiTokenSerializer

    def get_queryset(self):  # noqa: ANN201
        return ApiToken.objects.filter(user=self.request.user)

    def perform_destroy(self, instance: ApiToken) -> None:
        actions.do_revoke_api_token(instance)


class EventListView(generics.ListAPIView):
    """Recent studio events, newest first (``?after=<id>`` for those after an id, oldest first)."""

    required_role = SIGNED_IN
    serializer_class = EventSerializer

    def get_queryset(self):  # noqa: ANN201
        qs = Event.objects.filter(group="studio")
        after = self.request.query_params.get("after")
        if after is not None:
            if not after.isdigit():
                raise StudioAPIError("invalid", "'after' must be an event id (a non-negative integer).",
                                     "Use the id of the last event you received, e.g. ?after=120")
            qs = qs.filter(id__gt=int(after)).order_by("id")
        return qs


class SelfTestView(APIView):
    """Round trip through the task queue: a worker publishes ``selftest.completed`` to the events stream."""

    required_role = BUILDER

    @extend_schema(request=None, responses={202: inline_serializer("SelfTestAccepted", {
        "request_id": serializers.IntegerField()})})
    def post(self, request):  # noqa: ANN001, ANN201
        event = actions.do_request_selftest(request.user)
        return Response({"request_id": event.id}, status=status.HTTP_202_ACCEPTED)
