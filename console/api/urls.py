from django.urls import path

from console.api import views

org = "orgs/<slug:org_slug>/"

urlpatterns = [
    path("schema/", views.SchemaView.as_view(), name="api_schema"),
    path("docs/", views.SchemaDocsView.as_view(url_name="api_schema"), name="api_docs"),
    path("me/", views.MeView.as_view(), name="api_me"),
    path("orgs/", views.OrgListView.as_view(), name="api_orgs"),
    path(org, views.OrgDetailView.as_view(), name="api_org"),
    path(org + "members/", views.MemberListView.as_view(), name="api_members"),
    path(org + "members/<uuid:member_id>/", views.MemberDetailView.as_view(), name="api_member"),
    path(org + "invitations/", views.InvitationListView.as_view(), name="api_invitations"),
    path(
        org + "invitations/<uuid:invitation_id>/",
        views.InvitationDetailView.as_view(),
        name="api_invitation",
    ),
    path(org + "keys/", views.KeyListView.as_view(), name="api_keys"),
    path(org + "keys/<uuid:key_id>/", views.KeyDetailView.as_view(), name="api_key"),
    path(org + "keys/<uuid:key_id>/roll/", views.KeyRollView.as_view(), name="api_key_roll"),
    path(org + "keys/<uuid:key_id>/revoke/", views.KeyRevokeView.as_view(), name="api_key_revoke"),
    path(org + "audit/", views.AuditListView.as_view(), name="api_audit"),
    path(org + "webhooks/", views.WebhookListView.as_view(), name="api_webhooks"),
    path(
        org + "webhooks/deliveries/",
        views.WebhookDeliveryListView.as_view(),
        name="api_webhook_deliveries",
    ),
    path(
        org + "webhooks/deliveries/<uuid:delivery_id>/resend/",
        views.WebhookDeliveryResendView.as_view(),
        name="api_webhook_delivery_resend",
    ),
    path(
        org + "webhooks/<uuid:webhook_id>/", views.WebhookDetailView.as_view(), name="api_webhook"
    ),
    path(
        org + "webhooks/<uuid:webhook_id>/test/",
        views.WebhookTestView.as_view(),
        name="api_webhook_test",
    ),
]
