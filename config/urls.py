from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from approvals.views.whatif import what_if
from config import views
from gateway.api import api

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path(
        "login/",
        auth_views.LoginView.as_view(template_name="registration/login.html"),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("approvals/", include("approvals.urls")),
    path("audit/", include("audit.urls")),
    path("api/v1/", api.urls),
    # The tool admin's policy what-if, beside the tool's admin page (approvals owns the calls).
    path("admin/tools_registry/tool/<int:tool_id>/what-if/", what_if, name="policy_what_if"),
    path("admin/", admin.site.urls),
]

if settings.SANDBOX_ENABLED:
    urlpatterns.append(path("sandbox/", include("sandbox.urls")))
