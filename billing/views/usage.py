from __future__ import annotations

from datetime import timedelta

from django.http.response import HttpResponseBase
from django.shortcuts import render

from billing.exports import usage_csv_response, usage_row_dict
from billing.forms import UsageFilterForm
from billing.selectors import (
    USAGE_GROUPS_SHOWN,
    UsageFilters,
    UsageRow,
    usage_by_day,
    usage_series_iter,
    usage_series_largest,
    usage_totals,
)
from console.decorators import requires
from console.permissions import Action
from console.requests import OrgRequest

NOUNS = {"model": "models", "route": "routes", "key": "keys"}


def _label(row: UsageRow, group: str, other_groups: int = 0) -> str:
    if row.other:
        return f"{other_groups:,} other {NOUNS[group] if other_groups != 1 else group}"
    if group == "key":
        if row.key_id is None:
            return "(no key)"
        if not row.key_name:
            return str(row.key_id)[:8]
        # Names need not be unique (a rotated key keeps its name): the prefix tells them apart.
        return f"{row.key_name} ({row.key_prefix}…)"
    return str(getattr(row, group) or "(none)")


def _chart_data(
    rows: list[UsageRow],
    daily: list[UsageRow],
    group: str,
    filters: UsageFilters,
    other_groups: int,
) -> dict:
    """One point per day of the range (0, or no latency, on a day without usage) and one
    series per model, route or key (by id: two keys may share a name), the other groups
    together last."""
    count = (filters.end - filters.start).days + 1
    days = [(filters.start + timedelta(days=n)).isoformat() for n in range(count)]
    index = {day: i for i, day in enumerate(days)}
    series: dict[object, dict] = {}
    for row in rows:
        if row.day is None:
            continue
        entry = series.setdefault(
            ("other",) if row.other else row.key_id if group == "key" else getattr(row, group),
            {
                "label": _label(row, group, other_groups),
                **{metric: [0] * len(days) for metric in ("tokens", "requests", "cost_micros")},
            },
        )
        i = index[row.day.isoformat()]
        entry["tokens"][i] += row.total_tokens
        entry["requests"][i] += row.requests
        entry["cost_micros"][i] += row.cost_micros
    latency: dict[str, list[int | None]] = {"p50": [None] * len(days), "p95": [None] * len(days)}
    for row in daily:
        if row.day is not None:
            latency["p50"][index[row.day.isoformat()]] = row.latency_p50_ms
            latency["p95"][index[row.day.isoformat()]] = row.latency_p95_ms
    return {"days": days, "series": list(series.values()), **latency}


@requires(Action.USAGE_VIEW)
def usage_page(request: OrgRequest, org_slug: str) -> HttpResponseBase:
    """Charts and a table of usage by day, split by model, route or key (the largest on their
    own, the others together); ``?format=csv`` downloads the numbers of every one."""
    org = request.org
    form = UsageFilterForm(request.GET or None, org=org)
    filters, group = form.filters()
    # Filters that do not hold show why and nothing else: not the default month, nor its file.
    invalid = form.is_bound and not form.is_valid()
    if request.GET.get("format") == "csv" and not invalid:
        # The file has every group on its own, streamed as the database hands them over.
        every = usage_series_iter(org=org, filters=filters, group_by=["day", group])
        response = usage_csv_response(every, ["day", group])
        response["Content-Disposition"] = (
            f'attachment; filename="usage-{org.slug}-{filters.start}-{filters.end}.csv"'
        )
        return response
    # The page: the largest groups on their own, the others (thousands of keys, say) together.
    largest = None if invalid else usage_series_largest(org=org, filters=filters, group=group)
    rows = largest.rows if largest else []
    other_groups = largest.other_groups if largest else 0
    daily = usage_by_day(rows)
    context = {
        "form": form,
        "filters": filters,
        "group": group,
        "noun": NOUNS[group],
        "shown_groups": USAGE_GROUPS_SHOWN,
        "other_groups": other_groups,
        "rows": [
            {**usage_row_dict(row, ["day", group]), "label": _label(row, group, other_groups)}
            for row in rows
        ],
        "daily": daily,
        "totals": usage_totals(daily),
        "chart": _chart_data(rows, daily, group, filters, other_groups),
        "csv_query": request.GET.urlencode(),
        "invalid": invalid,
    }
    template = "billing/usage.html#usage-panel" if request.htmx else "billing/usage.html"
    return render(request, template, context, status=400 if invalid else 200)
