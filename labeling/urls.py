"""Labeling pages: /labeling/ (annotators, builders) and /reports/ (moderators)."""

from django.urls import path

from labeling import views

urlpatterns = [
    path("labeling/", views.labeling_home, name="stage-labeling"),
    path("labeling/<int:pk>/", views.annotate, name="labeling-annotate"),
    path("labeling/<int:pk>/manage/", views.manage, name="labeling-manage"),
    path("reports/", views.reports_page, name="stage-reports"),
]
