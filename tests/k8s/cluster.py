"""A real Kubernetes control plane on loopback, for the backend's tests.

etcd, kube-apiserver (token authentication, RBAC, the default admission plugins, TLS with a CA
made here), kube-controller-manager (Deployments, ReplicaSets, endpoints, garbage collection,
service accounts, node lifecycle) and kube-scheduler are the real binaries from Debian's
`kubernetes` source package (tests/k8s/build_binaries.sh). There is no container runtime here, so
no real kubelet: tests/k8s/kubelet.py stands in for one.

Identities: ``admin`` (system:masters) for the tests' own checks and hand edits, the controller
manager and the scheduler; ``platform-orchestrator``, with no group, for the backend under test,
which gets only the Role in deploy/kubernetes/orchestrator-rbac.yaml.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parents[2]
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
ORCHESTRATOR_USER = "platform-orchestrator"


def binaries_dir() -> Path:
    return Path(os.environ.get("K8S_BIN_DIR") or REPO / ".cache" / "k8s" / "bin")


def binaries_missing() -> list[str]:
    folder = binaries_dir()
    return [name for name in COMPONENTS if not os.access(folder / name, os.X_OK)]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _certificates(folder: Path) -> None:
    """A CA, and a serving certificate for 127.0.0.1 signed by it; a service-account key pair."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, server_key = _key(), _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-cluster-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.crt").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(_pem_key(server_key))
    account_key = _key()
    (folder / "sa.key").write_bytes(_pem_key(account_key))
    (folder / "sa.pub").write_bytes(
        account_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


@dataclass
class LocalCluster:
    workdir: Path
    bin_dir: Path = field(default_factory=binaries_dir)
    server: str = ""
    tokens: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    admin: Any = None
    """An API client as ``admin``, set by the session fixture."""

    def kubeconfig(self, user: str) -> Path:
        return self.workdir / f"kubeconfig-{user}"

    def _write_kubeconfig(self, user: str) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority": str(self.workdir / "ca.crt"),
                    },
                }
            ],
            "users": [{"name": user, "user": {"token": self.tokens[user]}}],
            "contexts": [{"name": user, "context": {"cluster": "test", "user": user}}],
            "current-context": user,
        }
        # JSON is YAML: every kubeconfig reader takes it.
        self.kubeconfig(user).write_text(json.dumps(config, indent=2))

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "wb")  # closed with the process
        self.processes[name] = subprocess.Popen(
            [str(self.bin_dir / name), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait(self, name: str, ready: object, timeout_s: float = 120.0) -> None:
        """Wait for ``ready()`` to be true; fail with the component's log if it exits or hangs."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            process = self.processes[name]
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited ({process.returncode}):\n{self.log_tail(name)}")
            with contextlib.suppress(httpx.HTTPError):
                if ready():  # type: ignore[operator]
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{name} was not ready in {timeout_s:.0f} s:\n{self.log_tail(name)}")

    def start(self) -> None:
        _certificates(self.workdir)
        for user in ("admin", ORCHESTRATOR_USER):
            self.tokens[user] = secrets.token_hex(24)
        (self.workdir / "tokens.csv").write_text(
            f'{self.tokens["admin"]},admin,uid-admin,"system:masters"\n'
            f"{self.tokens[ORCHESTRATOR_USER]},{ORCHESTRATOR_USER},uid-orchestrator\n"
        )

        etcd_port, peer_port, api_port = _free_port(), _free_port(), _free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._spawn(
            "etcd",
            [
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
            ],
        )
        self._wait("etcd", lambda: httpx.get(f"{etcd_url}/health", timeout=2).status_code == 200)

        w = self.workdir
        self.server = f"https://127.0.0.1:{api_port}"
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                "--insecure-port=0",
                f"--tls-cert-file={w / 'server.crt'}",
                f"--tls-private-key-file={w / 'server.key'}",
                f"--token-auth-file={w / 'tokens.csv'}",
                "--anonymous-auth=false",
                "--authorization-mode=RBAC",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={w / 'sa.pub'}",
                f"--service-account-signing-key-file={w / 'sa.key'}",
                # The "kubernetes" Service's endpoint would be a loopback address, which
                # Endpoints validation rightly refuses; nothing here needs that Service.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
            ],
        )
        admin = {"Authorization": f"Bearer {self.tokens['admin']}"}
        ca = str(self.workdir / "ca.crt")
        self._wait(
            "kube-apiserver",
            lambda: (
                httpx.get(f"{self.server}/readyz", headers=admin, verify=ca, timeout=5).status_code
                == 200
            ),
        )
        for user in ("admin", ORCHESTRATOR_USER):
            self._write_kubeconfig(user)

        admin_config = str(self.kubeconfig("admin"))
        delegated = [
            f"--kubeconfig={admin_config}",
            f"--authentication-kubeconfig={admin_config}",
            f"--authorization-kubeconfig={admin_config}",
            "--bind-address=127.0.0.1",
            "--port=0",
            "--leader-elect=false",
            "--profiling=false",
        ]
        self._spawn(
            "kube-controller-manager",
            [
                *delegated,
                f"--secure-port={_free_port()}",
                f"--service-account-private-key-file={w / 'sa.key'}",
                f"--root-ca-file={w / 'ca.crt'}",
                "--use-service-account-credentials=false",
            ],
        )
        self._spawn("kube-scheduler", [*delegated, f"--secure-port={_free_port()}"])

    def assert_running(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited ({process.returncode}):\n{self.log_tail(name)}")

    def stop(self) -> None:
        # One at a time, newest first: the API server shuts down cleanly only while etcd is up.
        # Its graceful shutdown waits for open watches to end, which a throwaway cluster need
        # not wait for: after a short grace it is killed.
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
