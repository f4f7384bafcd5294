"""Page routes of the data studio: the Data stage."""

from django.urls import path

from training.datastudio import views

urlpatterns = [
    path("data/", views.data_page, name="stage-data"),
    path("data/recipes/", views.recipe_page, name="datastudio-recipes"),
    path("data/runs/<int:pk>/", views.curation_page, name="datastudio-run"),
    path("data/runs/<int:pk>/datasheet/", views.datasheet_page, name="datastudio-datasheet"),
]
