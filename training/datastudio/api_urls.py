"""API routes of the data studio (mounted under /api/datastudio/)."""

from django.urls import path

from training.datastudio import views

urlpatterns = [
    path("sources/", views.SourceListView.as_view(), name="api-ds-sources"),
    path("sources/<int:pk>/", views.SourceDetailView.as_view(), name="api-ds-source"),
    path("corpora/", views.CorporaView.as_view(), name="api-ds-corpora"),
    path("recipes/", views.RecipesView.as_view(), name="api-ds-recipes"),
    path("recipes/validate/", views.RecipeValidateView.as_view(), name="api-ds-recipe-validate"),
    path("preview/", views.PreviewView.as_view(), name="api-ds-preview"),
    path("lsh/", views.LSHView.as_view(), name="api-ds-lsh"),
    path("runs/", views.CurationListView.as_view(), name="api-ds-runs"),
    path("runs/<int:pk>/", views.CurationDetailView.as_view(), name="api-ds-run"),
    path("runs/<int:pk>/cancel/", views.CurationCancelView.as_view(), name="api-ds-run-cancel"),
    path("runs/<int:pk>/resume/", views.CurationResumeView.as_view(), name="api-ds-run-resume"),
    path("runs/<int:pk>/report/", views.CurationReportView.as_view(), name="api-ds-run-report"),
    path("runs/<int:pk>/decisions/", views.CurationDecisionsView.as_view(), name="api-ds-run-decisions"),
    path("runs/<int:pk>/documents/", views.CurationDocumentsView.as_view(), name="api-ds-run-documents"),
    path("runs/<int:pk>/datasheet/", views.CurationDatasheetView.as_view(), name="api-ds-run-datasheet"),
    path("runs/<int:pk>/log/", views.CurationLogView.as_view(), name="api-ds-run-log"),
]
