from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from console.admin import ReadOnlyAdmin, SnapshotAdmin
from inference.models import (
    Deployment,
    ExternalEndpoint,
    RefusalCount,
    Replica,
    Route,
    RouteScorer,
)
from inference.routing.egress import egress_policy, url_problem
from inference.services.deployments import deployment_pause, deployment_resume


class ReplicaInline(admin.TabularInline[Replica, Deployment]):
    model = Replica
    extra = 0
    can_delete = False
    fields = ["state", "progress", "host", "port", "pid", "gpus", "restart_count", "ready_at"]
    readonly_fields = ["state", "progress", "host", "port", "pid", "gpus", "restart_count"]
    readonly_fields += ["ready_at"]
    show_change_link = True


@admin.register(Deployment)
class DeploymentAdmin(ReadOnlyAdmin):
    list_display = ["name", "org", "served_model_name", "state", "desired_replicas", "paused"]
    list_filter = ["state", "paused", "runner", "source"]
    search_fields = ["name", "served_model_name", "model", "org__slug"]
    inlines = [ReplicaInline]
    actions = ["pause", "resume"]

    @admin.action(description="Pause selected deployments (their replicas stop)")
    def pause(self, request: HttpRequest, queryset: QuerySet[Deployment]) -> None:
        for deployment in queryset.filter(deleted_at=None):
            deployment_pause(deployment=deployment, actor=request.user)  # type: ignore[arg-type]
        self.message_user(request, "Paused.", messages.SUCCESS)

    @admin.action(description="Resume selected deployments")
    def resume(self, request: HttpRequest, queryset: QuerySet[Deployment]) -> None:
        selected = list(queryset.filter(deleted_at=None).select_related("org"))
        refused = 0
        for deployment in selected:
            try:
                deployment_resume(deployment=deployment, actor=request.user)  # type: ignore[arg-type]
            except ValidationError as error:  # a suspended organisation's, say
                refused += 1
                self.message_user(
                    request,
                    f"Not resumed: {deployment.name} ({deployment.org.slug}). "
                    + " ".join(error.messages),
                    messages.ERROR,
                )
        if not refused:
            self.message_user(request, "Resumed.", messages.SUCCESS)
        elif refused < len(selected):
            self.message_user(request, "The others were resumed.", messages.SUCCESS)


@admin.register(Replica)
class ReplicaAdmin(ReadOnlyAdmin):
    list_display = ["id", "deployment", "state", "host", "port", "pid", "restart_count"]
    list_filter = ["state", "backend"]
    search_fields = ["deployment__name", "host"]


# Routes and external endpoints (the gateway's routing). Tenants edit them in the console, where
# every change is validated and audited; staff mostly look.
@admin.register(Route)
class RouteAdmin(ReadOnlyAdmin):
    # A route's graph (targets, cycles, one kind of work) is checked across the org's routes
    # by the service; a field edited here would skip that.
    list_display = ["name", "org", "policy", "updated_at"]
    list_filter = ["policy"]
    search_fields = ["name", "org__slug"]


class ExternalEndpointAdminForm(forms.ModelForm[ExternalEndpoint]):
    class Meta:
        model = ExternalEndpoint
        fields = ["base_url", "model"]

    def clean_base_url(self) -> str:
        """The same address check as a tenant's form: staff cannot point the gateway at the
        platform's own network either, unless GATEWAY_EXTERNAL_ALLOW admits it."""
        base_url = str(self.cleaned_data["base_url"]).strip().rstrip("/")
        problem = url_problem(base_url, egress_policy(tuple(settings.GATEWAY_EXTERNAL_ALLOW)))
        if problem:
            raise forms.ValidationError(problem)
        return base_url


@admin.register(ExternalEndpoint)
class ExternalEndpointAdmin(SnapshotAdmin):
    form = ExternalEndpointAdminForm
    list_display = ["name", "org", "base_url", "model"]
    search_fields = ["name", "org__slug", "base_url"]
    # The key is stored encrypted; the admin never shows or edits it. Routes refer to the name.
    exclude = ["api_key_encrypted"]
    readonly_fields = ["org", "name", "api_key_hint", "created_by", "created_at"]
    audit_action = "endpoint.updated"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # tenants add endpoints, with their key

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a route may use it: tenants delete, after the check that none does


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

    def has_add_permission(self, request: HttpRequest) -> bool:
        # A scorer comes from a tenant's uploaded outcome file, on the route's page.
        return False


@admin.register(RefusalCount)
class RefusalCountAdmin(ReadOnlyAdmin):
    """Requests refused before reaching a model, per key, reason and minute: a key that floods
    the gateway, or a revoked key something still uses, shows up here."""

    list_display = ["minute", "org", "api_key", "status_code", "error_code", "count"]
    list_filter = ["status_code", "error_code"]
    search_fields = ["org__slug", "api_key__prefix", "api_key__name"]
    date_hierarchy = "minute"
    list_select_related = ["org", "api_key"]
