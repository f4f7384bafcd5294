"""Labeling API routes, mounted at /api/labeling/."""

from django.urls import path

from labeling import views

urlpatterns = [
    path("projects/", views.ProjectListView.as_view(), name="labeling-projects"),
    path("projects/<int:pk>/", views.ProjectDetailView.as_view(), name="labeling-project"),
    path("projects/<int:pk>/import/", views.ProjectImportView.as_view(), name="labeling-import"),
    path("projects/<int:pk>/generate/", views.GenerateView.as_view(), name="labeling-generate"),
    path("projects/<int:pk>/next/", views.NextItemView.as_view(), name="labeling-next"),
    path("projects/<int:pk>/progress/", views.ProjectProgressView.as_view(), name="labeling-progress"),
    path("projects/<int:pk>/quality/", views.ProjectQualityView.as_view(), name="labeling-quality"),
    path("assignments/<int:pk>/skip/", views.SkipView.as_view(), name="labeling-skip"),
    path("assignments/<int:pk>/extend/", views.ExtendLockView.as_view(), name="labeling-extend"),
    path("assignments/<int:pk>/suggestions/", views.SuggestionsView.as_view(), name="labeling-suggestions"),
    path("judgements/", views.JudgementListView.as_view(), name="labeling-judgements"),
    path("judgements/<int:pk>/", views.JudgementDetailView.as_view(), name="labeling-judgement"),
    path("reports/", views.ReportListView.as_view(), name="labeling-reports"),
    path("reports/<int:pk>/", views.ReportDetailView.as_view(), name="labeling-report"),
    path("reports/<int:pk>/triage/", views.ReportActionView.as_view(action_name="triage"), name="labeling-report-triage"),
    path("reports/<int:pk>/resolve/", views.ReportActionView.as_view(action_name="resolve"),
         name="labeling-report-resolve"),
    path("reports/<int:pk>/dismiss/", views.ReportActionView.as_view(action_name="dismiss"),
         name="labeling-report-dismiss"),
    path("snapshots/", views.SnapshotListView.as_view(), name="labeling-snapshots"),
    path("snapshots/<int:pk>/", views.SnapshotDetailView.as_view(), name="labeling-snapshot"),
    path("snapshots/<int:pk>/export/", views.SnapshotExportView.as_view(), name="labeling-export"),
]
