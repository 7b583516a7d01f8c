from __future__ import annotations

from django.urls import path

from accounts import views

app_name = "accounts"

urlpatterns = [
    path("", views.account, name="account"),
    path("password/", views.change_password, name="password"),
    path("two-factor/", views.two_factor_page, name="two_factor"),
    path("two-factor/enrol/", views.enrol, name="enrol"),
    path("two-factor/confirm/", views.confirm, name="confirm"),
    path("two-factor/verify/", views.verify, name="verify"),
]
