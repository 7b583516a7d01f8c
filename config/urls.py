from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView

from accounts.forms import SignInForm
from accounts.views import admin_password_change
from approvals.views.whatif import what_if
from config import views
from gateway.api import api

admin.site.site_header = "Countersign administration"
admin.site.site_title = "Countersign admin"
admin.site.index_title = "Tools, agents, people and grants"

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path(
        "login/",
        auth_views.LoginView.as_view(
            template_name="registration/login.html", authentication_form=SignInForm
        ),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("account/", include("accounts.urls")),
    # Single sign-on (OpenID Connect): /oidc/authenticate/ and the provider's callback.
    path("oidc/", include("mozilla_django_oidc.urls")),
    path("approvals/", include("approvals.urls")),
    path("audit/", include("audit.urls")),
    path("api/v1/", api.urls),
    # One sign-in page for everyone, with its lockout, second factor and single sign-on.
    path("admin/login/", RedirectView.as_view(pattern_name="login", query_string=True)),
    # Changing one's password there: the old one is counted as a sign-in (django-axes).
    path("admin/password_change/", admin.site.admin_view(admin_password_change)),
    # The tool admin's policy what-if, beside the tool's admin page (approvals owns the calls).
    path("admin/tools_registry/tool/<int:tool_id>/what-if/", what_if, name="policy_what_if"),
    path("admin/", admin.site.urls),
]

if settings.SANDBOX_ENABLED:
    urlpatterns.append(path("sandbox/", include("sandbox.urls")))
