"""Start-up configuration: production-like variables pass Django's deployment checks, and a value
that cannot work stops start-up with a message naming its variable."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from inference.conf import OrchestratorConfig
from inference.gateway.config import GatewayConfig
from inference.orchestrator.kubernetes.config import KubernetesConfig

ROOT = Path(__file__).resolve().parents[2]


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SECURE_"))}


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**_base_env(), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_production_variables():
    result = _run(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DJANGO_SECRET_KEY="x7!Kp2mQ9zR4vL8wN3bT6yH1cF5jD0sG-aE_uI+oP*lZ&kX@eV",
        ALLOWED_HOSTS="console.example.com",
        SITE_URL="https://console.example.com",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_missing_secret_key_fails_loudly_in_production():
    result = _run("check", DJANGO_DEBUG="0")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr


_STRICT = (
    "SECURE_SSL_REDIRECT",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
)


def _settings_with_pytest_imported(**env: str) -> subprocess.CompletedProcess[str]:
    """Loads console.settings in a process that has imported pytest (as a plugin, a shell or a
    command importing test helpers would) and prints the security settings."""
    code = (
        "import pytest, django; django.setup(); from django.conf import settings; "
        f"print([getattr(settings, name) for name in {_STRICT!r}])"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**_base_env(), "DJANGO_SETTINGS_MODULE": "console.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_importing_pytest_does_not_spare_production_its_secret_key():
    result = _settings_with_pytest_imported(DJANGO_DEBUG="0")
    assert result.returncode != 0
    assert "ImproperlyConfigured: DJANGO_SECRET_KEY must be set" in result.stderr


def test_importing_pytest_keeps_the_strict_security_defaults():
    result = _settings_with_pytest_imported(
        DJANGO_DEBUG="0", DJANGO_SECRET_KEY="x7!Kp2mQ9zR4vL8wN3bT6yH1cF5jD0sG-aE_uI+oP*lZ&kX@eV"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[True, True, True, 31536000, True, True]"


def test_django_testing_relaxes_the_defaults_as_the_test_suite_needs():
    result = _settings_with_pytest_imported(DJANGO_DEBUG="0", DJANGO_TESTING="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[False, False, False, 0, False, False]"


def test_the_test_suite_and_the_processes_it_starts_run_with_django_testing(settings):
    # In the environment, so that gateway and manage.py processes started by tests inherit it.
    assert os.environ["DJANGO_TESTING"] == "1"
    assert settings.TESTING is True


def test_a_malformed_boolean_is_refused():
    result = _run("check", DJANGO_DEBUG="maybe")
    assert result.returncode != 0
    assert "DJANGO_DEBUG must be a boolean" in result.stderr


def test_connecting_to_a_database_that_never_answers_gives_up_after_the_connect_timeout():
    # A hung server or pooler: it accepts the connection and says nothing.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    connect = (
        "import django; django.setup(); from django.db import connection; "
        "connection.ensure_connection()"
    )
    started = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-c", connect],
            cwd=ROOT,
            env={
                **_base_env(),
                "DJANGO_DEBUG": "1",
                "DJANGO_SETTINGS_MODULE": "console.settings",
                "DATABASE_URL": f"postgres://app@127.0.0.1:{port}/app",
                "DATABASE_CONNECT_TIMEOUT_S": "2",
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        silent.close()
    assert result.returncode != 0
    assert "OperationalError" in result.stderr
    assert time.monotonic() - started < 30


def test_a_connect_timeout_below_one_second_is_refused():
    result = _run("check", DJANGO_DEBUG="1", DATABASE_CONNECT_TIMEOUT_S="0")
    assert result.returncode != 0
    assert "DATABASE_CONNECT_TIMEOUT_S must be at least 1, got 0" in result.stderr


@pytest.mark.parametrize("name", ["INVITATIONS_PENDING_PER_ORG", "INVITATION_EMAILS_PER_HOUR"])
def test_an_invitation_limit_below_one_is_refused(name):
    result = _run("check", DJANGO_DEBUG="1", **{name: "0"})
    assert result.returncode != 0
    assert f"{name} must be at least 1, got 0" in result.stderr


def test_a_malformed_encryption_key_stops_start_up_naming_its_variable():
    result = _run("check", DJANGO_DEBUG="1", WEBHOOK_ENCRYPTION_KEY="not-a-fernet-key")
    assert result.returncode != 0
    assert "WEBHOOK_ENCRYPTION_KEY must be comma-separated Fernet keys" in result.stderr
    assert "not-a-fernet-key" not in result.stderr


def test_earlier_secret_keys_are_read_from_django_secret_key_fallbacks():
    result = _run(
        "shell",
        "-c",
        "from django.conf import settings; print(settings.SECRET_KEY_FALLBACKS)",
        DJANGO_DEBUG="1",
        DJANGO_SECRET_KEY_FALLBACKS="first-old-key, second-old-key",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "['first-old-key', 'second-old-key']"


def test_log_level_is_accepted_in_any_case():
    result = _run(
        "shell",
        "-c",
        "import logging; print(logging.getLevelName(logging.getLogger().level))",
        DJANGO_DEBUG="1",
        LOG_LEVEL="debug",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "DEBUG"


def test_an_unknown_log_level_is_refused_naming_log_level():
    result = _run("check", DJANGO_DEBUG="1", LOG_LEVEL="verbose")
    assert result.returncode != 0
    assert "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR or CRITICAL" in result.stderr


@pytest.mark.parametrize("name", ["API_THROTTLE_USER", "API_THROTTLE_ANON"])
def test_a_throttle_rate_drf_cannot_read_stops_start_up_naming_its_variable(name):
    result = _run("check", DJANGO_DEBUG="1", **{name: "100 per minute"})
    assert result.returncode != 0
    assert f"{name} must look like 1200/min" in result.stderr


def test_throttle_rates_in_every_unit_drf_reads_are_accepted():
    result = _run(
        "check", DJANGO_DEBUG="1", API_THROTTLE_USER="5/second", API_THROTTLE_ANON="1000/day"
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("config", "name", "value", "allowed"),
    [
        (GatewayConfig, "GATEWAY_METER_FLUSH_MS", "0", "at least 10"),
        (GatewayConfig, "GATEWAY_METER_FLUSH_MS", "-1", "at least 10"),
        (GatewayConfig, "GATEWAY_METER_BATCH", "0", "at least 1"),
        (GatewayConfig, "GATEWAY_SNAPSHOT_POLL_MS", "-500", "at least 10"),
        (GatewayConfig, "GATEWAY_SNAPSHOT_TTL_S", "0", "at least 1"),
        (GatewayConfig, "GATEWAY_MAX_BODY_BYTES", "-1", "at least 1024"),
        (GatewayConfig, "GATEWAY_CONNECT_TIMEOUT_S", "0", "at least 1"),
        (GatewayConfig, "GATEWAY_READ_TIMEOUT_S", "-1", "at least 1"),
        (GatewayConfig, "GATEWAY_COLD_START_WAIT_S", "-1", "at least 0"),
        (GatewayConfig, "GATEWAY_EJECT_S", "-1", "at least 0"),
        (GatewayConfig, "GATEWAY_DEFAULT_MAX_TOKENS", "-1", "at least 1"),
        (GatewayConfig, "GATEWAY_AFFINITY_PREFIX_CHARS", "-1", "at least 0"),
        (GatewayConfig, "GATEWAY_REDIS_TIMEOUT_MS", "0", "at least 1"),
        (GatewayConfig, "GATEWAY_INFLIGHT_PUBLISH_MS", "5", "0 (never) or at least 100"),
        (OrchestratorConfig, "ORCHESTRATOR_INTERVAL_S", "0", "at least 1"),
        (OrchestratorConfig, "ORCHESTRATOR_RESTART_LIMIT", "0", "at least 1"),
        (OrchestratorConfig, "ORCHESTRATOR_BACKOFF_BASE_S", "0", "at least 1"),
        (
            OrchestratorConfig,
            "ORCHESTRATOR_BACKOFF_CAP_S",
            "1",
            "at least ORCHESTRATOR_BACKOFF_BASE_S (2)",
        ),
        (OrchestratorConfig, "ORCHESTRATOR_START_TIMEOUT_S", "-5", "at least 1"),
        (OrchestratorConfig, "ORCHESTRATOR_DRAIN_TIMEOUT_S", "-1", "at least 0"),
        (OrchestratorConfig, "VLLM_CPU_KVCACHE_GIB", "0", "at least 1"),
        (KubernetesConfig, "K8S_ENGINE_PORT", "0", "between 1 and 65535"),
        (KubernetesConfig, "K8S_ENGINE_PORT", "-1", "between 1 and 65535"),
        (KubernetesConfig, "K8S_ENGINE_PORT", "65536", "between 1 and 65535"),
        (KubernetesConfig, "K8S_STARTUP_TIMEOUT_S", "0", "at least 10"),
        (KubernetesConfig, "K8S_STARTUP_TIMEOUT_S", "-30", "at least 10"),
    ],
)
def test_a_gateway_or_orchestrator_setting_out_of_range_is_refused_naming_it_and_its_range(
    monkeypatch, config, name, value, allowed
):
    monkeypatch.setenv("K8S_NAMESPACE", "inference")  # the Kubernetes backend needs one
    monkeypatch.setenv(name, value)
    with pytest.raises(
        ImproperlyConfigured, match=re.escape(f"{name} must be {allowed}, got {value}")
    ):
        config.from_env()


def test_the_documented_defaults_and_edges_are_accepted(monkeypatch):
    for name, value in {
        "GATEWAY_METER_FLUSH_MS": "10",
        "GATEWAY_INFLIGHT_PUBLISH_MS": "0",
        "GATEWAY_COLD_START_WAIT_S": "0",
        "ORCHESTRATOR_DRAIN_TIMEOUT_S": "0",
    }.items():
        monkeypatch.setenv(name, value)
    config = GatewayConfig.from_env()
    assert (config.meter_flush_s, config.inflight_publish_s) == (0.01, 0)
    assert OrchestratorConfig.from_env().drain_timeout_s == 0
    for name, value in {
        "K8S_NAMESPACE": "inference",
        "K8S_ENGINE_PORT": "65535",
        "K8S_STARTUP_TIMEOUT_S": "10",
    }.items():
        monkeypatch.setenv(name, value)
    kube = KubernetesConfig.from_env()
    assert (kube.engine_port, kube.startup_timeout_s) == (65535, 10)
