"""Root URL configuration: pages, the API under /api/, schema and docs, health."""

from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from studio import views

SpectacularAPIView.required_role = "public"
SpectacularSwaggerView.required_role = "public"

api_patterns = [
    path("me/", views.MeView.as_view(), name="api-me"),
    path("tokens/", views.ApiTokenListView.as_view(), name="api-tokens"),
    path("tokens/<int:pk>/", views.ApiTokenDetailView.as_view(), name="api-token"),
    path("events/", views.EventListView.as_view(), name="api-events"),
    path("system/selftest/", views.SelfTestView.as_view(), name="api-selftest"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    # keep last: unknown API paths get the JSON error shape, also in DEBUG mode
    re_path(r"^.*$", views.api_not_found, name="api-not-found"),
]

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("api/labeling/", include("labeling.api_urls")),
    path("api/", include("training.api_urls")),
    path("api/", include(api_patterns)),
    path("admin/", admin.site.urls),
    path("", include("labeling.urls")),
    path("", include("training.urls")),
    path("", include("frontend.urls")),
]

handler400 = "studio.errors.json_400"
handler403 = "studio.errors.json_403"
handler404 = "studio.errors.json_404"
handler500 = "studio.errors.json_500"
