from django.contrib.auth import views as auth_views
from django.urls import path

from frontend import views
from frontend.stages import STAGES

auth_views.LoginView.required_role = "public"
auth_views.LogoutView.required_role = "public"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    *(path(f"{s.slug}/", views.stage_view(s.slug), name=f"stage-{s.slug}") for s in STAGES if not s.own_pages),
    path("account/", views.account, name="account"),
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
]
