"""API routes of the training app (mounted under /api/)."""

from django.urls import include, path

from training import views

urlpatterns = [
    path("datastudio/", include("training.datastudio.api_urls")),
    path("datasets/", views.DatasetListView.as_view(), name="api-datasets"),
    path("datasets/upload/", views.DatasetUploadView.as_view(), name="api-dataset-upload"),
    path("datasets/<int:pk>/", views.DatasetDetailView.as_view(), name="api-dataset"),
    path("tokenizers/", views.TokenizerListView.as_view(), name="api-tokenizers"),
    path("tokenizers/<int:pk>/", views.TokenizerDetailView.as_view(), name="api-tokenizer"),
    path("tokenizers/<int:pk>/tokenize/", views.TokenizeView.as_view(), name="api-tokenizer-tokenize"),
    path("runs/", views.RunListView.as_view(), name="api-runs"),
    path("runs/presets/", views.RunPresetsView.as_view(), name="api-run-presets"),
    path("runs/demo/", views.DemoView.as_view(), name="api-run-demo"),
    path("runs/<int:pk>/", views.RunDetailView.as_view(), name="api-run"),
    path("runs/<int:pk>/cancel/", views.RunCancelView.as_view(), name="api-run-cancel"),
    path("runs/<int:pk>/resume/", views.RunResumeView.as_view(), name="api-run-resume"),
    path("runs/<int:pk>/clone/", views.RunCloneView.as_view(), name="api-run-clone"),
    path("runs/<int:pk>/metrics/", views.RunMetricsView.as_view(), name="api-run-metrics"),
    path("runs/<int:pk>/log/", views.RunLogView.as_view(), name="api-run-log"),
    path("checkpoints/", views.CheckpointListView.as_view(), name="api-checkpoints"),
    path("checkpoints/<int:pk>/export/", views.CheckpointExportView.as_view(), name="api-checkpoint-export"),
    path("models/", views.ModelListView.as_view(), name="api-models"),
    path("chat/models/", views.ChatModelsView.as_view(), name="api-chat-models"),
    path("chat/feedback/", views.FeedbackView.as_view(), name="api-chat-feedback"),
    path("chat/votes/", views.VoteView.as_view(), name="api-chat-votes"),
]
