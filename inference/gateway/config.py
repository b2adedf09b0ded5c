"""Gateway settings, read from environment variables (README.md documents each one)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from console.envvars import env_bool, env_int, env_str


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    snapshot_poll_s: float = 0.5
    snapshot_ttl_s: float = 30.0
    max_body_bytes: int = 4 * 1024 * 1024
    connect_timeout_s: float = 5.0
    # Longest silence allowed from an upstream: a non-streamed completion sends nothing until done.
    read_timeout_s: float = 600.0
    cold_start_wait_s: float = 120.0
    eject_s: float = 10.0
    meter_flush_s: float = 1.0
    meter_batch: int = 500
    metering: bool = True
    # Write usage batches in a child process (True) or in a thread of the gateway's own process.
    meter_process: bool = True
    org_rpm_limit: int = 0
    org_tpm_limit: int = 0
    # Completion tokens a budget reservation assumes for each answer when a request sets no
    # max_tokens and the deployment no max_model_len.
    default_max_tokens: int = 4096
    affinity_prefix_chars: int = 256
    balance: str = "affinity"  # affinity | least | round_robin
    access_log: bool = True
    redis_url: str = ""
    # Longest wait for Redis on one limits step (connect or answer).
    redis_timeout_s: float = 0.5
    # Admit requests unlimited (True) or refuse them with a 503 (False) while Redis cannot count.
    limits_fail_open: bool = False
    metrics_token: str = ""
    gil_switch_interval_s: float = 0.0005
    # Hosts, addresses and CIDR ranges external endpoints may reach despite being non-public.
    external_allow: tuple[str, ...] = ()
    # How often in-flight counts per deployment are published for the autoscaler (0: never).
    inflight_publish_s: float = 1.0
    # Answer browsers' CORS preflights and let pages on any origin read /v1 responses.
    cors: bool = True
    # Refuse /v1 over plain http (SECURE_SSL_REDIRECT); a request is https when the server
    # says so or, with trust_forwarded_proto (TRUST_X_FORWARDED_PROTO), when its proxy does.
    https_only: bool = False
    trust_forwarded_proto: bool = False
    # Strict-Transport-Security for responses over https (SECURE_HSTS_*); empty: none.
    hsts: str = ""

    @classmethod
    def from_env(cls) -> GatewayConfig:
        """The configuration the environment gives; ImproperlyConfigured naming the variable and
        what it allows for a value out of range (a flush interval of 0 would spin a thread)."""
        from django.conf import settings

        balance = env_str("GATEWAY_BALANCE", "affinity")
        if balance not in {"affinity", "least", "round_robin"}:
            raise ImproperlyConfigured(
                f"GATEWAY_BALANCE must be affinity, least or round_robin, got {balance!r}"
            )
        inflight_publish_ms = env_int("GATEWAY_INFLIGHT_PUBLISH_MS", 1000, minimum=0)
        if 0 < inflight_publish_ms < 100:
            raise ImproperlyConfigured(
                "GATEWAY_INFLIGHT_PUBLISH_MS must be 0 (never) or at least 100, "
                f"got {inflight_publish_ms}"
            )
        return cls(
            snapshot_poll_s=env_int("GATEWAY_SNAPSHOT_POLL_MS", 500, minimum=10) / 1000,
            snapshot_ttl_s=float(env_int("GATEWAY_SNAPSHOT_TTL_S", 30, minimum=1)),
            max_body_bytes=env_int("GATEWAY_MAX_BODY_BYTES", 4 * 1024 * 1024, minimum=1024),
            connect_timeout_s=float(env_int("GATEWAY_CONNECT_TIMEOUT_S", 5, minimum=1)),
            read_timeout_s=float(env_int("GATEWAY_READ_TIMEOUT_S", 600, minimum=1)),
            cold_start_wait_s=float(env_int("GATEWAY_COLD_START_WAIT_S", 120, minimum=0)),
            eject_s=float(env_int("GATEWAY_EJECT_S", 10, minimum=0)),
            meter_flush_s=env_int("GATEWAY_METER_FLUSH_MS", 1000, minimum=10) / 1000,
            meter_batch=env_int("GATEWAY_METER_BATCH", 500, minimum=1),
            metering=env_bool("GATEWAY_METERING", True),
            meter_process=env_bool("GATEWAY_METER_PROCESS", True),
            # Read by settings.py, because the console shows or checks them too.
            org_rpm_limit=settings.GATEWAY_ORG_RPM_LIMIT,
            org_tpm_limit=settings.GATEWAY_ORG_TPM_LIMIT,
            external_allow=tuple(settings.GATEWAY_EXTERNAL_ALLOW),
            default_max_tokens=env_int("GATEWAY_DEFAULT_MAX_TOKENS", 4096, minimum=1),
            affinity_prefix_chars=env_int("GATEWAY_AFFINITY_PREFIX_CHARS", 256, minimum=0),
            balance=balance,
            access_log=env_bool("GATEWAY_ACCESS_LOG", True),
            cors=env_bool("GATEWAY_CORS", True),
            redis_url=env_str("REDIS_URL"),
            redis_timeout_s=env_int("GATEWAY_REDIS_TIMEOUT_MS", 500, minimum=1) / 1000,
            limits_fail_open=env_bool("GATEWAY_LIMITS_FAIL_OPEN", False),
            metrics_token=env_str("GATEWAY_METRICS_TOKEN"),
            inflight_publish_s=inflight_publish_ms / 1000,
            # The console's security settings (settings.py), so that /v1 gets what it gets.
            https_only=settings.SECURE_SSL_REDIRECT,
            trust_forwarded_proto=settings.SECURE_PROXY_SSL_HEADER is not None,
            hsts=_hsts(settings),
        )


def _hsts(settings: Any) -> str:
    """The header Django's SecurityMiddleware gives the console's responses over https."""
    if settings.SECURE_HSTS_SECONDS <= 0:
        return ""
    value = f"max-age={settings.SECURE_HSTS_SECONDS}"
    if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
        value += "; includeSubDomains"
    if settings.SECURE_HSTS_PRELOAD:
        value += "; preload"
    return value
