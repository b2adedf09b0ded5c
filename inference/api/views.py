"""REST endpoints for deployments: /api/orgs/<org_slug>/deployments/..."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from console.api.access import OrgAPIView, Paginated
from console.permissions import Action
from inference.api.serializers import (
    DeploymentSerializer,
    DeploymentWriteSerializer,
    LogQuerySerializer,
    LogTailSerializer,
    ScaleSerializer,
)
from inference.models import Deployment
from inference.selectors.deployments import (
    deployments_for_org,
    replica_log_note,
    replica_log_tail,
    replicas_for_deployment,
)
from inference.services.deployments import (
    deployment_create,
    deployment_delete,
    deployment_pause,
    deployment_resume,
    deployment_scale,
    deployment_update,
)


class _DeploymentView(OrgAPIView):
    def _deployment(self, deployment_id: str) -> Deployment:
        return get_object_or_404(Deployment.objects.filter(org=self.access.org), id=deployment_id)

    def _detail(self, deployment: Deployment, code: int = status.HTTP_200_OK) -> Response:
        deployment.refresh_from_db()
        replicas = replicas_for_deployment(deployment=deployment)
        body = DeploymentSerializer(deployment, context={"replicas": replicas}).data
        return Response(body, status=code)


class DeploymentListView(Paginated, _DeploymentView):
    actions = {"GET": Action.DEPLOYMENTS_VIEW, "POST": Action.DEPLOYMENTS_MANAGE}

    @extend_schema(responses=DeploymentSerializer(many=True), summary="The org's deployments")
    def get(self, request: Request, org_slug: str) -> Response:
        return self.page(request, deployments_for_org(org=self.access.org), DeploymentSerializer)

    @extend_schema(
        request=DeploymentWriteSerializer,
        responses={201: DeploymentSerializer},
        summary="Deploy a model; the orchestrator starts its replicas",
    )
    def post(self, request: Request, org_slug: str) -> Response:
        data = DeploymentWriteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        deployment = deployment_create(
            org=self.access.org,
            actor=self.access.user,
            actor_key=self.access.key,
            **data.validated_data,
        )
        return self._detail(deployment, status.HTTP_201_CREATED)


class DeploymentDetailView(_DeploymentView):
    actions = {
        "GET": Action.DEPLOYMENTS_VIEW,
        "PATCH": Action.DEPLOYMENTS_MANAGE,
        "DELETE": Action.DEPLOYMENTS_MANAGE,
    }

    @extend_schema(responses=DeploymentSerializer, summary="A deployment and its replicas")
    def get(self, request: Request, org_slug: str, deployment_id: str) -> Response:
        return self._detail(self._deployment(deployment_id))

    @extend_schema(
        request=DeploymentWriteSerializer(partial=True),
        responses=DeploymentSerializer,
        summary="Change settings; a new model, engine arguments or GPU count replaces replicas",
    )
    def patch(self, request: Request, org_slug: str, deployment_id: str) -> Response:
        deployment = self._deployment(deployment_id)
        data = DeploymentWriteSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        deployment = deployment_update(
            deployment=deployment,
            actor=self.access.user,
            actor_key=self.access.key,
            **data.validated_data,
        )
        return self._detail(deployment)

    @extend_schema(
        responses={202: DeploymentSerializer},
        summary="Delete: replicas drain and stop, then it goes",
        description="Answers with the deployment, `deleting` true. Asking again while it is "
        "being deleted gets the same answer; once it is gone, 404.",
    )
    def delete(self, request: Request, org_slug: str, deployment_id: str) -> Response:
        deployment = deployment_delete(
            deployment=self._deployment(deployment_id),
            actor=self.access.user,
            actor_key=self.access.key,
        )
        return self._detail(deployment, status.HTTP_202_ACCEPTED)


class DeploymentScaleView(_DeploymentView):
    actions = {"POST": Action.DEPLOYMENTS_MANAGE}

    @extend_schema(
        request=ScaleSerializer,
        responses=DeploymentSerializer,
        summary="Set the replica range (min 0 allows scaling to zero)",
    )
    def post(self, request: Request, org_slug: str, deployment_id: str) -> Response:
        deployment = self._deployment(deployment_id)
        data = ScaleSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        deployment = deployment_scale(
            deployment=deployment,
            actor=self.access.user,
            actor_key=self.access.key,
            **data.validated_data,
        )
        return self._detail(deployment)


class DeploymentPauseView(_DeploymentView):
    actions = {"POST": Action.DEPLOYMENTS_MANAGE}

    @extend_schema(request=None, responses=DeploymentSerializer, summary="Stop all replicas")
    def post(self, request: Request, org_slug: str, deployment_id: str) -> Response:
        deployment = deployment_pause(
            deployment=self._deployment(deployment_id),
            actor=self.access.user,
            actor_key=self.access.key,
        )
        return self._detail(deployment)


class DeploymentResumeView(_DeploymentView):
    actions = {"POST": Action.DEPLOYMENTS_MANAGE}

    @extend_schema(request=None, responses=DeploymentSerializer, summary="Run replicas again")
    def post(self, request: Request, org_slug: str, deployment_id: str) -> Response:
        deployment = deployment_resume(
            deployment=self._deployment(deployment_id),
            actor=self.access.user,
            actor_key=self.access.key,
        )
        return self._detail(deployment)


class DeploymentLogsView(_DeploymentView):
    actions = {"GET": Action.DEPLOYMENTS_VIEW}

    @extend_schema(
        parameters=[LogQuerySerializer],
        responses=LogTailSerializer,
        summary="The end of a replica's engine log",
    )
    def get(self, request: Request, org_slug: str, deployment_id: str) -> Response:
        deployment = self._deployment(deployment_id)
        query = LogQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        replicas = deployment.replicas.order_by("-created_at")
        wanted = query.validated_data.get("replica")
        replica = get_object_or_404(replicas, id=wanted) if wanted else replicas.first()
        lines = query.validated_data["lines"]
        tail = replica_log_tail(replica=replica, lines=lines) if replica is not None else []
        note = replica_log_note(replica=replica) if replica is not None else ""
        return Response({"replica": replica.pk if replica else None, "lines": tail, "note": note})
