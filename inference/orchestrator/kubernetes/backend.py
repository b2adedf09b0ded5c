"""The Kubernetes backend: per model deployment, one Deployment and one Service in a namespace.

Kubernetes schedules, restarts and places the pods; this module only makes the two objects match
the desired state and reads back what the cluster says. Every write that depends on a resource
version is retried from a fresh read when it meets a conflict (someone else wrote in between);
transient API errors (429, 5xx, a dropped connection) are retried a few times with a short
backoff; anything else becomes a ``ClusterError`` whose message the deployment shows.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from inference.orchestrator.backends.base import Capacity
from inference.orchestrator.kubernetes.config import KubernetesConfig
from inference.orchestrator.kubernetes.manifests import (
    DEPLOYMENT_ID,
    DeploymentFacts,
    desired_deployment,
    desired_service,
    object_name,
    selector_labels,
    spec_drift,
)

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

logger = logging.getLogger(__name__)
TRANSIENT = {429, 500, 502, 503, 504}
WRITE_ATTEMPTS = 5


class ClusterError(Exception):
    """The cluster refused a request or could not be reached; the message says which and why."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient
        """Unreachable or overloaded: worth trying again next pass, and no fault of the spec."""


def _explain(error: Exception, doing: str) -> ClusterError:
    from kubernetes.client.exceptions import ApiException

    if isinstance(error, ApiException):
        if error.status == 403:
            return ClusterError(
                f"Kubernetes refused to let the orchestrator {doing} (403 Forbidden); "
                "check its Role (docs/operations.md)."
            )
        return ClusterError(
            f"Kubernetes answered {error.status} {error.reason} to {doing}.",
            transient=error.status in TRANSIENT,
        )
    return ClusterError(
        f"The Kubernetes API could not be reached to {doing}: {error}", transient=True
    )


@dataclass(frozen=True)
class PodView:
    name: str
    phase: str
    ip: str
    ready: bool
    """The pod's address is among the Service's ready endpoints."""
    deleting: bool
    scheduled: bool
    restarts: int
    problem: str
    """Why it is not running yet or crashed (waiting reason, unschedulable message), or ''."""
    started_at: str | None
    ready_at: str | None
    spec_version: int | None


@dataclass
class Observation:
    deployment: dict[str, Any] | None
    service: dict[str, Any] | None
    pods: list[PodView] = field(default_factory=list)
    endpoints: list[tuple[str, str, int]] = field(default_factory=list)
    """(pod name, ip, port) of every ready address behind the Service."""
    warnings: list[str] = field(default_factory=list)
    """The newest warning per pod that is not ready, and the Deployment's failure conditions."""
    failed: str = ""
    """Kubernetes gave up on the rollout (progress deadline exceeded)."""


class KubernetesBackend:
    name = "kubernetes"

    def __init__(self, config: KubernetesConfig, api_client: ApiClient | None = None) -> None:
        from kubernetes import client

        self.config = config
        self.api = api_client or config.api_client()
        self.apps = client.AppsV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.conflicts = 0
        """Writes that met a stale resource version and were redone from a fresh read."""

    def close(self) -> None:
        self.api.close()

    def capacity(self) -> Capacity:
        """No accelerators of ours to hand out: the scheduler places pods on the cluster's GPUs."""
        return Capacity(gpus=[])

    # Calls

    def _call(self, doing: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One API call, retried on transient failures; 404 and 409 are left to the caller.

        Answers are parsed as plain JSON, not into the client's models: the objects stay in the
        API's own shape, which is what the manifests and ``spec_drift`` speak.
        """
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        kwargs.setdefault("_request_timeout", self.config.request_timeout_s)
        kwargs["_preload_content"] = False
        for attempt in range(3):
            try:
                response = function(*args, **kwargs)
                return json.loads(response.data or b"{}")
            except ApiException as error:
                if error.status not in TRANSIENT or attempt == 2:
                    if error.status in (404, 409):
                        raise
                    raise _explain(error, doing) from error
            except (HTTPError, OSError) as error:
                if attempt == 2:
                    raise _explain(error, doing) from error
            time.sleep(0.25 * 2**attempt)
        raise AssertionError("unreachable")

    def _read(self, doing: str, function: Callable[..., Any], name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            found = self._call(doing, function, name, self.config.namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise _explain(error, doing) from error
        assert isinstance(found, dict)
        return found

    # Reading

    def read_deployment(self, name: str) -> dict[str, Any] | None:
        return self._read("read a Deployment", self.apps.read_namespaced_deployment, name)

    def read_service(self, name: str) -> dict[str, Any] | None:
        return self._read("read a Service", self.core.read_namespaced_service, name)

    def observe(self, facts: DeploymentFacts) -> Observation:
        name = object_name(facts)
        selector = ",".join(f"{k}={v}" for k, v in selector_labels(facts).items())
        deployment = self.read_deployment(name)
        service = self.read_service(name)
        endpoints = self._ready_endpoints(name)
        ready_pods = {pod for pod, _, _ in endpoints}
        pods_raw = self._call(
            "list pods",
            self.core.list_namespaced_pod,
            self.config.namespace,
            label_selector=selector,
        )
        pods = [self._pod_view(pod, ready_pods) for pod in pods_raw.get("items") or []]
        pods.sort(key=lambda pod: pod.name)
        observation = Observation(deployment, service, pods, endpoints)
        self._read_problems(observation, name)
        return observation

    def _ready_endpoints(self, name: str) -> list[tuple[str, str, int]]:
        found = self._read("read Endpoints", self.core.read_namespaced_endpoints, name)
        ready: list[tuple[str, str, int]] = []
        for subset in (found or {}).get("subsets") or []:
            port = next(
                (p["port"] for p in subset.get("ports") or [] if p.get("name") == "http"), None
            )
            for address in subset.get("addresses") or []:
                target = address.get("targetRef") or {}
                if port is not None and target.get("kind") == "Pod":
                    ready.append((target["name"], address["ip"], int(port)))
        return sorted(ready)

    @staticmethod
    def _pod_view(pod: dict[str, Any], ready_pods: set[str]) -> PodView:
        meta, status = pod["metadata"], pod.get("status") or {}
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        problem = ""
        scheduled = conditions.get("PodScheduled", {}).get("status") == "True"
        if not scheduled and conditions.get("PodScheduled", {}).get("reason") == "Unschedulable":
            problem = "Unschedulable: " + conditions["PodScheduled"].get("message", "")
        restarts = 0
        for container in status.get("containerStatuses") or []:
            restarts += int(container.get("restartCount") or 0)
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
                problem = f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
            ended = (container.get("lastState") or {}).get("terminated") or {}
            if ended and not problem and not (container.get("ready")):
                problem = f"last exit: {ended.get('reason', '')} (code {ended.get('exitCode')})"
        annotations = meta.get("annotations") or {}
        version = annotations.get("console-platform/spec-version", "")
        return PodView(
            name=meta["name"],
            phase=status.get("phase") or "Pending",
            ip=status.get("podIP") or "",
            ready=meta["name"] in ready_pods,
            deleting=bool(meta.get("deletionTimestamp")),
            scheduled=scheduled,
            restarts=restarts,
            problem=problem,
            started_at=status.get("startTime"),
            ready_at=conditions.get("Ready", {}).get("lastTransitionTime")
            if conditions.get("Ready", {}).get("status") == "True"
            else None,
            spec_version=int(version) if version.isdigit() else None,
        )

    def _read_problems(self, observation: Observation, name: str) -> None:
        """Warnings worth showing: newest event per pod that is not ready, failed conditions."""
        status = (observation.deployment or {}).get("status") or {}
        for condition in status.get("conditions") or []:
            if condition["type"] == "ReplicaFailure" and condition["status"] == "True":
                observation.warnings.append(condition.get("message", "ReplicaFailure"))
            if condition["type"] == "Progressing" and condition.get("status") == "False":
                observation.failed = condition.get("message", "the rollout did not progress")
        waiting = {pod.name for pod in observation.pods if not pod.ready and not pod.deleting}
        if not waiting:
            return
        events = self._call(
            "list events",
            self.core.list_namespaced_event,
            self.config.namespace,
            field_selector="type=Warning",
        )
        newest: dict[str, tuple[str, str]] = {}
        for event in events.get("items") or []:
            target = (event.get("involvedObject") or {}).get("name", "")
            if target not in waiting:
                continue
            when = str(
                event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp")
            )
            if target not in newest or when >= newest[target][0]:
                text = f"{event.get('reason', '')}: {event.get('message', '')}"
                newest[target] = (when, text.strip(": "))
        for pod in observation.pods:
            message = pod.problem or newest.get(pod.name, ("", ""))[1]
            if pod.name in waiting and message and message not in observation.warnings:
                observation.warnings.append(message)

    # Writing

    def _ours(self, live: dict[str, Any], facts: DeploymentFacts) -> bool:
        labels = live["metadata"].get("labels") or {}
        spec = live.get("spec") or {}
        selector = (spec.get("selector") or {}).get("matchLabels", spec.get("selector")) or {}
        return facts.id in (labels.get(DEPLOYMENT_ID), selector.get(DEPLOYMENT_ID))

    def ensure(
        self,
        facts: DeploymentFacts,
        *,
        replicas: int,
        observed: Observation | None = None,
    ) -> list[str]:
        """Create what is missing, put back what was changed by hand, scale; say what was done.

        ``observed`` is the pass's reading of the cluster; writes use its resource versions, so
        a change made since then is met as a conflict and redone from a fresh read.
        """
        done: list[str] = []
        live = observed.deployment if observed else self.read_deployment(object_name(facts))
        done += self._ensure_deployment(facts, replicas, live)
        live_service = observed.service if observed else self.read_service(object_name(facts))
        done += self._ensure_service(facts, live_service)
        return done

    def _ensure_deployment(
        self, facts: DeploymentFacts, replicas: int, live: dict[str, Any] | None
    ) -> list[str]:
        from kubernetes.client.exceptions import ApiException

        name, namespace = object_name(facts), self.config.namespace
        done: list[str] = []
        for _ in range(WRITE_ATTEMPTS):
            try:
                if live is None:
                    body = desired_deployment(facts, self.config, replicas=replicas)
                    self._call(
                        "create a Deployment",
                        self.apps.create_namespaced_deployment,
                        namespace,
                        body,
                    )
                    return [*done, f"created Deployment {name} with {replicas} replica(s)"]
                if not self._ours(live, facts):
                    raise ClusterError(
                        f"A Deployment named {name} exists in {namespace} and is not ours; "
                        "it is left alone."
                    )
                current = int((live.get("spec") or {}).get("replicas") or 0)
                # The template is compared without the count: scaling has its own subresource.
                desired = desired_deployment(facts, self.config, replicas=current)
                drift = spec_drift(desired["metadata"], live["metadata"], "metadata")
                drift += spec_drift(desired["spec"], live.get("spec"), "spec")
                if drift:
                    desired["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
                    replaced = self._call(
                        "update a Deployment",
                        self.apps.replace_namespaced_deployment,
                        name,
                        namespace,
                        desired,
                    )
                    live = replaced
                    done.append(f"put back {name} (changed: {', '.join(drift[:4])})")
                if current != replicas:
                    scale = {
                        "metadata": {
                            "name": name,
                            "namespace": namespace,
                            "resourceVersion": live["metadata"]["resourceVersion"],
                        },
                        "spec": {"replicas": replicas},
                    }
                    self._call(
                        "scale a Deployment",
                        self.apps.replace_namespaced_deployment_scale,
                        name,
                        namespace,
                        scale,
                    )
                    done.append(f"scaled {name} {current} -> {replicas}")
                return done
            except ApiException as error:
                if error.status == 409:
                    # Created meanwhile, or written since we read it: read again and redo.
                    self.conflicts += 1
                    logger.info("conflict on Deployment %s; retrying from a fresh read", name)
                elif error.status != 404:
                    raise _explain(error, "update a Deployment") from error
                live = self.read_deployment(name)
        raise ClusterError(
            f"Deployment {name} kept changing under us; will try again.", transient=True
        )

    def _ensure_service(self, facts: DeploymentFacts, live: dict[str, Any] | None) -> list[str]:
        from kubernetes.client.exceptions import ApiException

        name, namespace = object_name(facts), self.config.namespace
        desired = desired_service(facts, self.config)
        for _ in range(WRITE_ATTEMPTS):
            try:
                if live is None:
                    self._call(
                        "create a Service", self.core.create_namespaced_service, namespace, desired
                    )
                    return [f"created Service {name}"]
                if not self._ours(live, facts):
                    raise ClusterError(
                        f"A Service named {name} exists in {namespace} and is not ours; "
                        "it is left alone."
                    )
                drift = spec_drift(desired["metadata"], live["metadata"], "metadata")
                drift += spec_drift(desired["spec"], live.get("spec"), "spec")
                if not drift:
                    return []
                body = {**desired, "metadata": dict(desired["metadata"])}
                body["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
                # The cluster IP is allocated once and cannot change on update.
                body["spec"] = {**desired["spec"], "clusterIP": live["spec"].get("clusterIP")}
                if live["spec"].get("clusterIPs"):
                    body["spec"]["clusterIPs"] = live["spec"]["clusterIPs"]
                self._call(
                    "update a Service", self.core.replace_namespaced_service, name, namespace, body
                )
                return [f"put back Service {name} (changed: {', '.join(drift[:4])})"]
            except ApiException as error:
                if error.status == 409:
                    self.conflicts += 1
                elif error.status != 404:
                    raise _explain(error, "update a Service") from error
                live = self.read_service(name)
        raise ClusterError(
            f"Service {name} kept changing under us; will try again.", transient=True
        )

    def delete(self, facts: DeploymentFacts) -> bool:
        """Delete the Deployment and the Service we made for ``facts``; True once all are gone.

        Only objects carrying this deployment's id are touched; the garbage collector removes
        the ReplicaSets and pods the Deployment owns. Safe to call on every pass until it says
        True.
        """
        from kubernetes.client.exceptions import ApiException

        name, namespace = object_name(facts), self.config.namespace
        gone = True
        for kind, read, remove in (
            ("Deployment", self.read_deployment, self.apps.delete_namespaced_deployment),
            ("Service", self.read_service, self.core.delete_namespaced_service),
        ):
            live = read(name)
            if live is None:
                continue
            if not self._ours(live, facts):
                continue  # same name, someone else's: never ours to delete
            gone = False
            if live["metadata"].get("deletionTimestamp"):
                continue
            try:
                self._call(
                    f"delete a {kind}",
                    remove,
                    name,
                    namespace,
                    body={
                        "propagationPolicy": "Background",
                        "preconditions": {"uid": live["metadata"]["uid"]},
                    },
                )
            except ApiException as error:
                if error.status not in (404, 409):
                    raise _explain(error, f"delete a {kind}") from error
        selector = ",".join(f"{k}={v}" for k, v in selector_labels(facts).items())
        pods = self._call(
            "list pods", self.core.list_namespaced_pod, namespace, label_selector=selector
        )
        replica_sets = self._call(
            "list ReplicaSets",
            self.apps.list_namespaced_replica_set,
            namespace,
            label_selector=selector,
        )
        return gone and not pods.get("items") and not replica_sets.get("items")
