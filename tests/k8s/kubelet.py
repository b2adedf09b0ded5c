"""A stand-in kubelet: registers one GPU node and plays the node's part for pods bound to it.

No container runtime runs on the test machine, so nothing is actually started: this thread does
through the API what a kubelet reports. It registers a Ready node with `nvidia.com/gpu` capacity
and the usual GPU-node taint, renews the node's lease (so the real node-lifecycle controller keeps
it Ready), and, for every pod the real scheduler binds to it, reports the pod Running with its
container ready and a pod IP, which the real endpoints controller then puts behind the Service.
A pod whose image names the registry ``registry.invalid`` is reported as a kubelet reports an
image that cannot be pulled (waiting in ImagePullBackOff, with a Warning event). A pod being
deleted is removed at once, as a kubelet does once its containers have stopped.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import logging
import threading
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

logger = logging.getLogger(__name__)
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
UNPULLABLE = "registry.invalid/"
MERGE_PATCH = "application/merge-patch+json"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_micro() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class StandInKubelet:
    def __init__(self, api: client.ApiClient, *, node: str = "gpu-node-0", gpus: int = 4) -> None:
        self.core = client.CoreV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self.node = node
        self.gpus = gpus
        self._stop = threading.Event()
        self._ips = (f"10.244.{n // 250}.{n % 250 + 2}" for n in itertools.count())
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._register()
        for target in (self._renew_lease, self._serve_pods):
            thread = threading.Thread(target=target, name=f"kubelet-{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout_s: float = 5.0) -> None:
        for thread in self._threads:
            thread.join(timeout=timeout_s)

    # The node

    def _register(self) -> None:
        resources = {
            "cpu": "32",
            "memory": "256Gi",
            "pods": "110",
            "ephemeral-storage": "500Gi",
            "nvidia.com/gpu": str(self.gpus),
        }
        self.core.create_node(
            {
                "metadata": {
                    "name": self.node,
                    "labels": {
                        "kubernetes.io/hostname": self.node,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "nvidia.com/gpu.present": "true",
                    },
                },
                "spec": {"taints": [GPU_TAINT]},
            }
        )
        now = _now()
        conditions = [
            {"type": kind, "status": "False", "reason": "KubeletHasNoPressure"}
            for kind in ("MemoryPressure", "DiskPressure", "PIDPressure")
        ] + [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]
        for condition in conditions:
            condition.update(lastHeartbeatTime=now, lastTransitionTime=now, message="stand-in")
        self.core.patch_node_status(
            self.node,
            _content_type=MERGE_PATCH,
            body={
                "status": {
                    "capacity": resources,
                    "allocatable": resources,
                    "conditions": conditions,
                    "addresses": [
                        {"type": "InternalIP", "address": "10.0.0.10"},
                        {"type": "Hostname", "address": self.node},
                    ],
                    "nodeInfo": {
                        "kubeletVersion": "v1.20.2",
                        "kubeProxyVersion": "v1.20.2",
                        "operatingSystem": "linux",
                        "architecture": "amd64",
                        "containerRuntimeVersion": "none://stand-in",
                        "osImage": "stand-in",
                        "kernelVersion": "stand-in",
                        "machineID": "stand-in",
                        "systemUUID": "stand-in",
                        "bootID": "stand-in",
                    },
                }
            },
        )

    def _renew_lease(self) -> None:
        body = {
            "metadata": {"name": self.node, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": self.node, "leaseDurationSeconds": 40},
        }
        while not self._stop.is_set():
            body["spec"]["renewTime"] = _now_micro()  # type: ignore[index]
            try:
                try:
                    self.coordination.replace_namespaced_lease(self.node, "kube-node-lease", body)
                except ApiException as error:
                    if error.status != 404:
                        raise
                    self.coordination.create_namespaced_lease("kube-node-lease", body)
            except Exception as error:  # the API server is going away at the end of the session
                logger.debug("lease renewal failed: %s", error)
            self._stop.wait(5)

    # Pods

    def _serve_pods(self) -> None:
        while not self._stop.is_set():
            stream = watch.Watch()
            try:
                for event in stream.stream(
                    self.core.list_pod_for_all_namespaces,
                    field_selector=f"spec.nodeName={self.node}",
                    timeout_seconds=30,
                ):
                    if self._stop.is_set():
                        break
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._play(event["raw_object"])
            except Exception as error:
                logger.debug("pod watch ended: %s", error)
                self._stop.wait(0.5)
            finally:
                stream.stop()

    def _patch_status(self, meta: dict[str, Any], status: dict[str, Any]) -> None:
        with contextlib.suppress(ApiException):  # deleted meanwhile: the next event says so
            self.core.patch_namespaced_pod_status(
                meta["name"], meta["namespace"], {"status": status}, _content_type=MERGE_PATCH
            )

    def _play(self, pod: dict[str, Any]) -> None:
        meta, status, spec = pod["metadata"], pod.get("status") or {}, pod["spec"]
        if meta.get("deletionTimestamp"):
            with contextlib.suppress(ApiException):
                self.core.delete_namespaced_pod(
                    meta["name"], meta["namespace"], grace_period_seconds=0
                )
            return
        if status.get("phase") == "Running":
            return
        image = spec["containers"][0]["image"]
        if image.startswith(UNPULLABLE):
            if not status.get("containerStatuses"):
                self._report_pull_failure(pod, image)
            return
        now = _now()
        ready = [
            {"type": kind, "status": "True", "lastTransitionTime": now}
            for kind in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
        ]
        running: dict[str, Any] = {
            "phase": "Running",
            "podIP": next(self._ips),
            "hostIP": "10.0.0.10",
            "startTime": now,
            "conditions": ready,
            "containerStatuses": [
                {
                    "name": c["name"],
                    "image": c["image"],
                    "imageID": "stand-in://" + c["image"],
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": now}},
                }
                for c in spec["containers"]
            ],
        }
        running["podIPs"] = [{"ip": running["podIP"]}]
        self._patch_status(meta, running)

    def _report_pull_failure(self, pod: dict[str, Any], image: str) -> None:
        meta, now = pod["metadata"], _now()
        message = f'Back-off pulling image "{image}"'
        status = {
            "containerStatuses": [
                {
                    "name": c["name"],
                    "image": c["image"],
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": message}},
                }
                for c in pod["spec"]["containers"]
            ]
        }
        self._patch_status(meta, status)
        with contextlib.suppress(ApiException):
            self.core.create_namespaced_event(
                meta["namespace"],
                {
                    "metadata": {"generateName": meta["name"] + "."},
                    "involvedObject": {
                        "kind": "Pod",
                        "name": meta["name"],
                        "namespace": meta["namespace"],
                        "uid": meta["uid"],
                        "apiVersion": "v1",
                    },
                    "reason": "Failed",
                    "message": f'Failed to pull image "{image}": not found',
                    "type": "Warning",
                    "source": {"component": "kubelet", "host": self.node},
                    "firstTimestamp": now,
                    "lastTimestamp": now,
                    "count": 1,
                },
            )
