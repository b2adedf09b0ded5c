"""The router's tests reuse the gateway's fixtures (a real gateway under uvicorn, fake engines)."""

from tests.gateway.conftest import engine, gw, inference_key, start_gateway  # noqa: F401
