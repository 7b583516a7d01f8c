from __future__ import annotations

from django.urls import path

from sandbox import views

app_name = "sandbox"

urlpatterns = [
    path("payments/v1/refunds", views.create_refund, name="create_refund"),
    path("payments/v1/refunds/by-key/<str:key>", views.refund_by_key, name="refund_by_key"),
    path("payments/v1/payments/<str:payment_id>", views.payment, name="payment"),
    path("payments/v1/openapi.json", views.openapi_document, name="payments_openapi"),
]
