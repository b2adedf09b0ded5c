from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin

from inference.models import Deployment, ExternalEndpoint, Replica, Route, RouteScorer
from inference.routing.egress import egress_policy, url_problem


class ReplicaInline(admin.TabularInline[Replica, Deployment]):
    model = Replica
    extra = 0
    can_delete = False
    fields = ["state", "progress", "host", "port", "pid", "gpus", "restart_count", "ready_at"]
    readonly_fields = ["state", "progress", "host", "port", "pid", "gpus", "restart_count"]
    readonly_fields += ["ready_at"]
    show_change_link = True


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin[Deployment]):
    list_display = ["name", "org", "served_model_name", "state", "desired_replicas", "paused"]
    list_filter = ["state", "paused", "runner", "source"]
    search_fields = ["name", "served_model_name", "model", "org__slug"]
    readonly_fields = ["state", "state_reason", "demand_at", "low_load_since", "spec_version"]
    inlines = [ReplicaInline]


@admin.register(Replica)
class ReplicaAdmin(admin.ModelAdmin[Replica]):
    list_display = ["id", "deployment", "state", "host", "port", "pid", "restart_count"]
    list_filter = ["state", "backend"]
    search_fields = ["deployment__name", "host"]
    # Written by the orchestrator only; an edit here would fight it.
    readonly_fields = [f.name for f in Replica._meta.fields]


# Routes and external endpoints (the gateway's routing). Tenants edit them in the console, where
# every change is validated and audited; staff mostly look.
@admin.register(Route)
class RouteAdmin(admin.ModelAdmin[Route]):
    list_display = ["name", "org", "policy", "updated_at"]
    list_filter = ["policy"]
    search_fields = ["name", "org__slug"]
    readonly_fields = ["created_at", "updated_at"]


class ExternalEndpointAdminForm(forms.ModelForm[ExternalEndpoint]):
    class Meta:
        model = ExternalEndpoint
        fields = ["org", "name", "base_url", "model", "created_by"]

    def clean_base_url(self) -> str:
        """The same address check as a tenant's form: staff cannot point the gateway at the
        platform's own network either, unless GATEWAY_EXTERNAL_ALLOW admits it."""
        base_url = str(self.cleaned_data["base_url"]).strip().rstrip("/")
        problem = url_problem(base_url, egress_policy(tuple(settings.GATEWAY_EXTERNAL_ALLOW)))
        if problem:
            raise forms.ValidationError(problem)
        return base_url


@admin.register(ExternalEndpoint)
class ExternalEndpointAdmin(admin.ModelAdmin[ExternalEndpoint]):
    form = ExternalEndpointAdminForm
    list_display = ["name", "org", "base_url", "model"]
    search_fields = ["name", "org__slug", "base_url"]
    # The key is stored encrypted; the admin never shows or edits it.
    exclude = ["api_key_encrypted"]
    readonly_fields = ["api_key_hint", "created_at"]


@admin.register(RouteScorer)
class RouteScorerAdmin(admin.ModelAdmin[RouteScorer]):
    list_display = ["route", "org", "state", "rows", "file_name", "created_at", "fitted_at"]
    list_filter = ["state"]
    search_fields = ["route__name", "org__name", "org__slug", "file_name"]
    # The uploaded file holds a tenant's prompts: staff see its size, not its text.
    exclude = ["upload", "head_json"]
    readonly_fields = [
        "org",
        "route",
        "state",
        "file_name",
        "rows",
        "weak_model",
        "strong_model",
        "reference_scores",
        "error",
        "created_by",
        "created_at",
        "fitted_at",
    ]
