from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from billing import urls as billing_urls
from console.views import accounts, keys, members, org, two_factor, webhooks
from inference import requests_urls, routes_urls

o = "o/<slug:org_slug>/"

handler404 = "console.api.errors.not_found"
handler500 = "console.api.errors.server_error"

urlpatterns = [
    path("", accounts.home, name="home"),
    # Staff sign in through the console's sign-in, second step included.
    path("admin/login/", two_factor.admin_login, name="admin_login"),
    path("admin/", admin.site.urls),
    path("api/", include("console.api.urls")),
    path("api/", include("inference.api.urls")),
    path("api/", include("billing.api.urls")),
    path("api/", include(routes_urls.api_urlpatterns)),
    path("api/", include(requests_urls.api_urlpatterns)),
    path("billing/", include("billing.urls")),
    # Accounts
    path("signup/", accounts.signup, name="signup"),
    path("login/", two_factor.LoginView.as_view(), name="login"),
    path("login/code/", two_factor.login_two_factor, name="login_two_factor"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("password-reset/", accounts.PasswordResetView.as_view(), name="password_reset"),
    path(
        "password-reset/sent/",
        auth_views.PasswordResetDoneView.as_view(),
        name="password_reset_done",
    ),
    path(
        "password-reset/<uidb64>/<token>/",
        accounts.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path(
        "password-reset/done/",
        auth_views.PasswordResetCompleteView.as_view(),
        name="password_reset_complete",
    ),
    path("account/", accounts.account, name="account"),
    path("account/password/", accounts.account_password, name="account_password"),
    path("account/email/", accounts.account_email, name="account_email"),
    path("account/delete/", accounts.account_delete_view, name="account_delete"),
    path("account/sessions/end/", accounts.sessions_end_view, name="sessions_end"),
    path("account/two-factor/", two_factor.two_factor_setup, name="two_factor_setup"),
    path("account/two-factor/off/", two_factor.two_factor_off, name="two_factor_off"),
    path(
        "account/two-factor/recovery-codes/",
        two_factor.recovery_codes_new,
        name="recovery_codes_new",
    ),
    path(
        "account/email/confirm/<str:token>/",
        accounts.email_change_confirm_view,
        name="email_change_confirm",
    ),
    path("account/confirm/send/", accounts.email_verify_send_view, name="email_verify_send"),
    path("account/confirm/<str:token>/", accounts.email_verify_view, name="email_verify"),
    path("orgs/new/", accounts.org_create_view, name="org_create"),
    path("invitations/<str:token>/", accounts.invitation_accept_view, name="invitation_accept"),
    # One organisation's console
    path(o, org.overview, name="org_overview"),
    path(o + "settings/", org.org_settings, name="org_settings"),
    path(o + "close/", org.org_close_view, name="org_close"),
    path(o + "settings/two-factor/", two_factor.org_two_factor, name="org_two_factor"),
    path(o + "audit/", org.audit_log, name="audit_log"),
    path(o + "webhooks/", webhooks.webhook_list, name="webhook_list"),
    path(o + "webhooks/<uuid:webhook_id>/test/", webhooks.webhook_test_view, name="webhook_test"),
    path(
        o + "webhooks/deliveries/<uuid:delivery_id>/resend/",
        webhooks.delivery_resend_view,
        name="webhook_delivery_resend",
    ),
    path(
        o + "webhooks/<uuid:webhook_id>/delete/",
        webhooks.webhook_delete_view,
        name="webhook_delete",
    ),
    path(o + "deployments/", include("inference.urls")),
    path(o, include(routes_urls.org_urlpatterns)),
    path(o, include(requests_urls.org_urlpatterns)),
    path(o, include(billing_urls.org_urlpatterns)),
    path(o + "keys/", keys.key_list, name="key_list"),
    path(o + "keys/new/", keys.key_create, name="key_create"),
    path(o + "keys/<uuid:key_id>/edit/", keys.key_edit, name="key_edit"),
    path(o + "keys/<uuid:key_id>/roll/", keys.key_roll, name="key_roll"),
    path(o + "keys/<uuid:key_id>/revoke/", keys.key_revoke, name="key_revoke"),
    path(o + "members/", members.member_list, name="member_list"),
    path(o + "leave/", members.org_leave, name="org_leave"),
    path(o + "members/invite/", members.member_invite, name="member_invite"),
    path(o + "members/<uuid:member_id>/role/", members.member_role, name="member_role"),
    path(o + "members/<uuid:member_id>/remove/", members.member_remove, name="member_remove"),
    path(
        o + "invitations/<uuid:invitation_id>/revoke/",
        members.invitation_revoke_view,
        name="invitation_revoke",
    ),
]
