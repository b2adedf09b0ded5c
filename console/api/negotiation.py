"""Content negotiation that names the formats an endpoint has when ``?format=`` asks for one it
lacks (DRF's own answers a bare 404 "Not found.")."""

from __future__ import annotations

from collections.abc import Iterable

from rest_framework.exceptions import NotFound
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer


class FormatNamingNegotiation(DefaultContentNegotiation):
    def filter_renderers(
        self, renderers: Iterable[BaseRenderer], format: str
    ) -> list[BaseRenderer]:
        renderers = list(renderers)
        chosen = [renderer for renderer in renderers if renderer.format == format]
        if not chosen:
            formats = ", ".join(sorted({renderer.format for renderer in renderers}))
            raise NotFound(f"This endpoint has no format {format!r}; use one of: {formats}.")
        return chosen
