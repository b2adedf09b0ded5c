"""The ASGI entry point: the gateway serves /v1, /metrics, /healthz and /readyz, Django serves
everything else.

The gateway sits in front of Django's ASGI handler, so inference requests never pass through
Django's URL resolver, middleware or ORM. Each server process gets its own gateway (its own
snapshot, connection pool and usage buffer); the ASGI lifespan starts and stops it.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

django_application = get_asgi_application()

from inference.gateway.app import Gateway  # noqa: E402  (needs Django set up first)

gateway = Gateway()
GATEWAY_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})


async def application(scope, receive, send):
    if scope["type"] == "http":
        path = scope["path"]
        if path.startswith("/v1/") or path in GATEWAY_PATHS:
            await gateway(scope, receive, send)
            return
    elif scope["type"] == "lifespan":
        await gateway.lifespan(receive, send)
        return
    await django_application(scope, receive, send)
