"""Django settings. Every value comes from an environment variable; README.md documents each one.

With no variables set the platform runs on its embedded default: SQLite, an in-process cache and
rate limiter, a filesystem Celery broker, console email and billing in local-ledger mode.
"""

from __future__ import annotations

import logging
from pathlib import Path

import dj_database_url
import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured

from console.envvars import (
    env_bool,
    env_fernet_keys,
    env_int,
    env_list,
    env_rate,
    env_str,
)

# Lets runtime code subscript Django's generic classes (admin.ModelAdmin[Model]) as the types do.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent
RUN_DIR = Path(env_str("RUN_DIR", str(BASE_DIR / ".run")))

DEBUG = env_bool("DJANGO_DEBUG", False)
# Set by the test suite's settings (tests/settings.py), never in production: the defaults relax
# as under DJANGO_DEBUG, without its debug pages.
TESTING = env_bool("DJANGO_TESTING", False)

SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if DEBUG or TESTING:
        # Only for the embedded default and the test suite; production must set its own.
        SECRET_KEY = "insecure-development-key-set-DJANGO_SECRET_KEY-in-production"  # noqa: S105
    else:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off")
# Earlier secret keys: what they signed stays valid, and secrets sealed with keys derived from
# them stay readable (console/crypto.py), until they are dropped from here.
SECRET_KEY_FALLBACKS = env_list("DJANGO_SECRET_KEY_FALLBACKS")
# Keys of secrets stored encrypted, read by console/crypto.py where they are used; read here as
# well so that a malformed one stops start-up instead of the first request that needs it.
for _variable in (
    "ENDPOINT_KEY_ENCRYPTION_KEY",
    "WEBHOOK_ENCRYPTION_KEY",
    "TWO_FACTOR_ENCRYPTION_KEY",
):
    env_fernet_keys(_variable)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "console.admin_site.PlatformAdminConfig",  # django.contrib.admin, with a platform overview
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "template_partials",
    "console",
    "inference",
    "billing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "console.middleware.ClientAddress",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "console.middleware.HtmxSignIn",
    "console.middleware.OrgMiddleware",
    "console.middleware.FormOnlyAddressPage",
]

ROOT_URLCONF = "console.urls"
ASGI_APPLICATION = "console.asgi.application"
WSGI_APPLICATION = "console.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "console.context_processors.console",
            ],
        },
    },
]

DATABASE_CONNECT_TIMEOUT_S = env_int("DATABASE_CONNECT_TIMEOUT_S", 5, minimum=1)
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several processes (web, worker, orchestrator) share the file: wait for locks, don't fail.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20
    DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
    # The test database is a file too, not SQLite's shared in-memory database: there, a gateway
    # thread reading while a test writes fails at once with "database table is locked", while
    # a file waits for the lock like the processes above.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "test-db.sqlite3")}
elif DATABASES["default"]["ENGINE"].startswith("django.db.backends.postgresql"):
    # Without it, connecting to a database that accepts connections and never answers waits
    # forever; an explicit connect_timeout in DATABASE_URL wins.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
        "connect_timeout", DATABASE_CONNECT_TIMEOUT_S
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

AUTH_USER_MODEL = "console.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

# Email: SMTP when EMAIL_HOST is set, otherwise printed to the console.
EMAIL_HOST = env_str("EMAIL_HOST")
EMAIL_PORT = env_int("EMAIL_PORT", 587)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
EMAIL_BACKEND = (
    "django.core.mail.backends.smtp.EmailBackend"
    if EMAIL_HOST
    else "django.core.mail.backends.console.EmailBackend"
)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "noreply@localhost")

# Security. Defaults are strict unless DJANGO_DEBUG is on (or DJANGO_TESTING: the test suite runs
# on plain http).
_RELAXED = DEBUG or TESTING
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("TRUST_X_FORWARDED_PROTO", False) else None
)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not _RELAXED)
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", not _RELAXED)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if _RELAXED else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not _RELAXED)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not _RELAXED)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 2_621_440)

INVITATION_TTL_HOURS = env_int("INVITATION_TTL_HOURS", 72)
# So that an organisation (or its key) cannot mail any number of addresses: pending invitations
# at once, and invitation emails an hour (a replacing invitation is one more email).
INVITATIONS_PENDING_PER_ORG = env_int("INVITATIONS_PENDING_PER_ORG", 50, minimum=1)
INVITATION_EMAILS_PER_HOUR = env_int("INVITATION_EMAILS_PER_HOUR", 20, minimum=1)
# Password-reset emails an hour: per address (its inbox is not flooded), per client address.
PASSWORD_RESET_EMAILS_PER_HOUR = (5, 20)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "console.api.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "console.api.negotiation.FormatNamingNegotiation",
    "DEFAULT_PARSER_CLASSES": [
        "console.api.parsers.JSONBodyParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "console.api.schema.PlatformAutoSchema",
    "EXCEPTION_HANDLER": "console.api.errors.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    # Throttle by the connection's address: uvicorn takes it from X-Forwarded-For for trusted
    # proxies only (--forwarded-allow-ips); DRF would otherwise believe any client's header.
    "NUM_PROXIES": 0,
    "DEFAULT_THROTTLE_RATES": {
        "anon": env_rate("API_THROTTLE_ANON", "60/min"),
        "user": env_rate("API_THROTTLE_USER", "1200/min"),
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Inference platform API",
    "DESCRIPTION": "Manage organisations, members, API keys, deployments, routes and usage.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "console.api.schema.error_responses",
    ],
}

# Celery: Redis (or any broker URL) in production; an embedded filesystem broker by default.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL or "filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    _broker_dir = RUN_DIR / "broker"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir),
        "data_folder_out": str(_broker_dir),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
    # Every process that sends or takes tasks needs them, wherever RUN_DIR points.
    for _folder in ("processed", "control"):
        (_broker_dir / _folder).mkdir(parents=True, exist_ok=True)
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 240)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 300)
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Webhook deliveries have a queue of their own, served by the Procfile's `webhooks` worker: a
# tenant's endpoint that answers slowly (up to its timeout) then delays other tenants'
# deliveries at most, never the rollups, Stripe meter events, emails and alerts of the rest.
CELERY_TASK_ROUTES = {"console.tasks.webhook_deliver_task": {"queue": "webhooks"}}
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {}
# Where beat remembers when each task last ran (celery beat --schedule overrides it).
CELERY_BEAT_SCHEDULE_FILENAME = str(RUN_DIR / "celerybeat-schedule")

# Billing. Without STRIPE_API_KEY the platform runs in local-ledger mode: no Stripe calls.
STRIPE_API_KEY = env_str("STRIPE_API_KEY")
STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET")
STRIPE_WEBHOOK_TOLERANCE_SECONDS = env_int("STRIPE_WEBHOOK_TOLERANCE_SECONDS", 300)
STRIPE_API_BASE = env_str("STRIPE_API_BASE")  # empty: Stripe's own; set for a local fake
STRIPE_MAX_RETRIES = env_int("STRIPE_MAX_RETRIES", 4)
BILLING_GRACE_PERIOD_HOURS = env_int("BILLING_GRACE_PERIOD_HOURS", 72)
BILLING_ROLLUP_MARGIN_SECONDS = env_int("BILLING_ROLLUP_MARGIN_SECONDS", 600)
# How long one incremental rollup run works before leaving the rest to the next (a backlog is
# caught up over several runs; the meter events task rolls up first, under the same time limit).
BILLING_ROLLUP_RUN_SECONDS = env_int("BILLING_ROLLUP_RUN_SECONDS", 60, minimum=1)
BILLING_METER_REPORT_DELAY_MINUTES = env_int("BILLING_METER_REPORT_DELAY_MINUTES", 5)
BILLING_METER_BATCH_SIZE = env_int("BILLING_METER_BATCH_SIZE", 200)
BILLING_METER_EVENTS_PER_SECOND = env_int("BILLING_METER_EVENTS_PER_SECOND", 20)
# How long one run of the meter events task sends for, batch after batch (under the tasks'
# 240 s soft time limit, with room for the rollup and queueing before it).
BILLING_METER_SEND_SECONDS = env_int("BILLING_METER_SEND_SECONDS", 120, minimum=1)
CELERY_BEAT_SCHEDULE.update(
    {
        "billing-usage-rollup": {"task": "billing.tasks.usage_rollup_task", "schedule": 300.0},
        "billing-usage-rollup-nightly": {
            "task": "billing.tasks.usage_rollup_recent_days_task",
            "schedule": 86400.0,
        },
        "billing-budget-alerts": {"task": "billing.tasks.budget_alerts_task", "schedule": 600.0},
        "billing-meter-events": {"task": "billing.tasks.meter_events_task", "schedule": 900.0},
        "billing-reconcile": {"task": "billing.tasks.meter_reconcile_task", "schedule": 3600.0},
        "billing-grace": {"task": "billing.tasks.grace_enforce_task", "schedule": 900.0},
        "billing-webhook-retry": {
            "task": "billing.tasks.stripe_events_retry_task",
            "schedule": 600.0,
        },
    }
)
# The gateway's rate limits for an organisation that has none of its own (0: none). Read here
# because the console shows them too; inference.gateway.config reads the rest of its settings.
GATEWAY_ORG_RPM_LIMIT = env_int("GATEWAY_ORG_RPM_LIMIT", 0, minimum=0)
GATEWAY_ORG_TPM_LIMIT = env_int("GATEWAY_ORG_TPM_LIMIT", 0, minimum=0)
# Hosts, addresses and CIDR ranges of the platform's own network that tenants' external
# endpoints may nevertheless point at (inference.routing.egress); empty: public addresses only.
GATEWAY_EXTERNAL_ALLOW = env_list("GATEWAY_EXTERNAL_ALLOW")

# Auto routes' thresholds follow their recent traffic (inference.services.router).
# Webhook deliveries that failed and are due again (console.services.webhooks).
CELERY_BEAT_SCHEDULE["console-webhook-retry"] = {
    "task": "console.tasks.webhook_retry_task",
    "schedule": 60.0,
}
CELERY_BEAT_SCHEDULE["console-webhook-prune"] = {
    "task": "console.tasks.webhook_prune_task",
    "schedule": 86400.0,
}
# Counts of refused requests older than 90 days (inference.services.refusals).
CELERY_BEAT_SCHEDULE["inference-refusals-prune"] = {
    "task": "inference.tasks.refusals_prune_task",
    "schedule": 86400.0,
}
CELERY_BEAT_SCHEDULE["inference-router-recalibrate"] = {
    "task": "inference.tasks.routes_recalibrate_task",
    "schedule": 600.0,
}
# Tenants' outcome files whose fit was lost (broker down at upload, worker killed mid-fit).
CELERY_BEAT_SCHEDULE["inference-scorers-fit-pending"] = {
    "task": "inference.tasks.route_scorers_fit_pending_task",
    "schedule": 600.0,
}

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").strip().upper()
if LOG_LEVEL not in logging.getLevelNamesMapping():
    raise ImproperlyConfigured(
        "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR or CRITICAL (in any case), "
        f"got {env_str('LOG_LEVEL')!r}"
    )
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "console.jsonlog.JsonFormatter"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json"}},
    "root": {"handlers": ["stderr"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
