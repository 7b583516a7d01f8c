from __future__ import annotations

from django.urls import path

from audit import views

app_name = "audit"

urlpatterns = [
    path("", views.events, name="events"),
    path("export.csv", views.export, {"fmt": "csv"}, name="export_csv"),
    path("export.jsonl", views.export, {"fmt": "jsonl"}, name="export_jsonl"),
    path("verify_export.py", views.verifier_script, name="verifier"),
    path("calls/<uuid:call_id>/", views.call_timeline, name="call"),
    path("session/", views.session_timeline, name="session"),
    path("analytics/", views.analytics, name="analytics"),
    path("verify/", views.verify_now, name="verify_now"),
    path("verify/<int:run_id>/", views.verification_status, name="verification_status"),
]
