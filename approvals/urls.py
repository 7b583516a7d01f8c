from __future__ import annotations

from django.urls import path

from approvals import views
from approvals.views import attention

app_name = "approvals"

urlpatterns = [
    path("", views.queue, name="queue"),
    path("next/", views.next_call, name="next"),
    path("reauthenticate/", views.reauthenticate, name="reauth"),
    path("<uuid:pk>/", views.detail, name="detail"),
    path("<uuid:pk>/decide/", views.decide, name="decide"),
    path("<uuid:pk>/reveal/", views.reveal, name="reveal"),
    path("<uuid:pk>/live/", views.live, name="live"),
    path("<uuid:pk>/notes/", views.add_note, name="add_note"),
    path("standing/", views.standing_approvals, name="standing"),
    path("standing/<int:pk>/revoke/", views.revoke_standing, name="revoke_standing"),
    # The "needs attention" page (approvals.views.attention).
    path("attention/", attention.attention, name="attention"),
    path("attention/<uuid:pk>/", attention.attention_item, name="attention_item"),
    path("attention/<uuid:pk>/resolve/", attention.resolve, name="attention_resolve"),
    path("attention/<uuid:pk>/rerun/", attention.rerun, name="attention_rerun"),
    path("attention/<uuid:pk>/recheck/", attention.recheck, name="attention_recheck"),
]
