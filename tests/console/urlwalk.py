"""Discover the project's URL patterns, so that access tests cover every new page by default."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.urls import URLPattern, URLResolver, get_resolver

PARAM = re.compile(r"<(?:(?P<converter>[^>:]+):)?(?P<name>[^>]+)>")


@dataclass(frozen=True)
class Pattern:
    route: str
    name: str | None
    callback: Any

    @property
    def params(self) -> list[str]:
        return [m.group("name") for m in PARAM.finditer(self.route)]

    def build(self, values: dict[str, str]) -> str:
        return "/" + PARAM.sub(lambda m: str(values[m.group("name")]), self.route)


def walk(resolver: URLResolver | None = None, prefix: str = "") -> Iterator[Pattern]:
    resolver = resolver or get_resolver()
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            if entry.namespace == "admin":
                continue  # staff only, guarded by is_staff rather than org membership
            yield from walk(entry, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield Pattern(prefix + str(entry.pattern), entry.name, entry.callback)


def org_patterns() -> list[Pattern]:
    """Every pattern that names an organisation."""
    return [p for p in walk() if "org_slug" in p.params]
