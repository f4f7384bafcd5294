"""Page routes of the training app: tokenizers, pretraining runs, comparison, chat playground."""

from django.urls import include, path

from training import views

urlpatterns = [
    path("tokenizers/", views.tokenizers_page, name="stage-tokenizers"),
    path("tokenizers/<int:pk>/", views.tokenizer_detail_page, name="tokenizer-detail"),
    path("pretraining/", views.pretraining_page, name="stage-pretraining"),
    path("fine-tuning/", views.fine_tuning_page, name="stage-fine-tuning"),
    path("pretraining/compare/", views.compare_page, name="runs-compare"),
    path("runs/<int:pk>/", views.run_detail_page, name="run-detail"),
    path("deploy/", views.deploy_page, name="stage-deploy"),
    path("chat/", views.chat_page, name="chat"),
    path("", include("training.datastudio.urls")),
]
