from __future__ import annotations

from typing import Any

from django.http import Http404, StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from billing.api.renderers import UsageCSVRenderer
from billing.api.serializers import (
    BudgetSerializer,
    SpendSerializer,
    UsageQuerySerializer,
    UsageResponseSerializer,
)
from billing.exports import usage_csv_response, usage_row_dict
from billing.models import Budget
from billing.selectors import (
    UsageFilters,
    account_peek,
    forecast_micros,
    key_month_to_date_spend,
    month_start,
    month_to_date_spend,
    spend_limit_details,
    usage_series_iter,
    usage_series_page,
)
from billing.services.accounts import budget_set
from console.api.access import OrgAPIView, Pages
from console.permissions import Action


class UsageRowPages(Pages):
    """Rows of the usage answer: a year of thousands of keys by day is hundreds of thousands."""

    default_limit = 1_000
    max_limit = 10_000


class UsageView(OrgAPIView):
    """Usage summed over the given dimensions. The JSON rows come a page at a time (``limit``,
    ``offset``), with ``rows_count``, ``next`` and ``previous`` beside them and the totals of
    every page on each; the CSV has every row."""

    actions = {"GET": Action.USAGE_VIEW}
    renderer_classes = [JSONRenderer, UsageCSVRenderer]

    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        # Errors are JSON in the API's one shape, also when the rows were asked for as CSV.
        if response.status_code >= 400:
            request.accepted_renderer = JSONRenderer()
            request.accepted_media_type = JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)

    @extend_schema(
        parameters=[
            UsageQuerySerializer,
            OpenApiParameter(
                "format", OpenApiTypes.STR, enum=["json", "csv"], description="json (default)"
            ),
            OpenApiParameter(
                "limit",
                OpenApiTypes.INT,
                description=f"Rows a page (JSON): {UsageRowPages.default_limit:,} by default, at "
                f"most {UsageRowPages.max_limit:,} (a larger limit is served as "
                f"{UsageRowPages.max_limit:,}). The CSV has every row.",
            ),
            OpenApiParameter(
                "offset", OpenApiTypes.INT, description="How many rows to skip (JSON)."
            ),
        ],
        responses={
            (200, "application/json"): UsageResponseSerializer,
            (200, "text/csv"): OpenApiResponse(
                response=OpenApiTypes.STR,
                description="With `format=csv`: the rows as CSV, a header line first.",
            ),
        },
        summary="Usage and cost over a date range, grouped by day, model, route and/or key",
    )
    def get(self, request: Request, org_slug: str) -> Response | StreamingHttpResponse:
        query = UsageQuerySerializer(data=request.query_params, context={"org": self.access.org})
        query.is_valid(raise_exception=True)
        data = query.validated_data
        dims = data["group_by"]
        filters = UsageFilters(
            start=data["start"],
            end=data["end"],
            key_id=data.get("key"),
            route=data.get("route", ""),
            model=data.get("model", ""),
        )
        ordered = [d for d in ("day", "model", "route", "key") if d in dims]
        if request.accepted_renderer.format == "csv":
            # Every row, streamed as the database hands them over.
            rows = usage_series_iter(org=self.access.org, filters=filters, group_by=dims)
            return usage_csv_response(rows, ordered)
        pages = UsageRowPages()
        pages.request = request
        pages.limit, pages.offset = pages.get_limit(request), pages.get_offset(request)
        page = usage_series_page(
            org=self.access.org,
            filters=filters,
            group_by=dims,
            offset=pages.offset,
            limit=pages.limit or UsageRowPages.default_limit,
        )
        pages.count = page.count
        return Response(
            {
                "start": filters.start,
                "end": filters.end,
                "group_by": ordered,
                "rows_count": page.count,
                "next": pages.get_next_link(),
                "previous": pages.get_previous_link(),
                "rows": [usage_row_dict(row, ordered) for row in page.rows],
                "totals": usage_row_dict(page.totals, []),
            }
        )


class SpendView(OrgAPIView):
    """Month-to-date spend, in all and per active key, for everyone who may see usage. The plan,
    the forecast, the hard cap and the budgets are billing: they are in the answer only for those
    who may see billing (as on the console's overview). The keys come a page at a time, newest
    first as in the key list: ``limit`` (50 by default, at most 500) and ``offset``, with
    ``keys_count``, ``next`` and ``previous`` beside them."""

    actions = {"GET": Action.USAGE_VIEW}

    @extend_schema(
        responses=SpendSerializer,
        parameters=[
            OpenApiParameter(
                "limit",
                OpenApiTypes.INT,
                description="Keys a page: 50 by default, at most 500 (a larger limit is served "
                "as 500).",
            ),
            OpenApiParameter(
                "offset", OpenApiTypes.INT, description="How many keys to skip, newest first."
            ),
        ],
        summary="Month-to-date spend; with billing.view also the forecast, cap and budgets",
    )
    def get(self, request: Request, org_slug: str) -> Response:
        org = self.access.org
        with_billing = self.access.can(Action.BILLING_VIEW)
        pages = Pages()
        page = pages.paginate_queryset(
            org.api_keys.filter(revoked_at=None).order_by("-created_at", "-id"), request, self
        )
        key_spend = key_month_to_date_spend([org.pk])
        keys: list[dict[str, Any]] = []
        for key in page or []:
            row: dict[str, Any] = {
                "key_id": key.pk,
                "name": key.name,
                "prefix": key.prefix,
                "month_to_date_micros": key_spend.get(key.pk, 0),
            }
            if with_billing:
                row["budget_micros"] = key.monthly_budget_micros
            keys.append(row)
        now = timezone.now()
        mtd = month_to_date_spend([org.pk], now=now)[org.pk]
        body: dict[str, Any] = {"period_start": month_start(now), "month_to_date_micros": mtd}
        if with_billing:
            limit = spend_limit_details([org.pk])[org.pk]
            budget = Budget.objects.filter(org=org).first()
            body |= {
                "plan": account_peek(org).plan.code,
                "forecast_micros": forecast_micros(org=org, now=now, mtd=mtd),
                "limit_micros": limit.cap_micros,
                "limit_reason": limit.reason,
                "budget": None
                if budget is None
                else {"amount_micros": budget.amount_micros, "hard_limit": budget.hard_limit},
            }
        body |= {
            "keys_count": pages.count,
            "next": pages.get_next_link(),
            "previous": pages.get_previous_link(),
            "keys": keys,
        }
        return Response(body)


class BudgetView(OrgAPIView):
    actions = {"GET": Action.BILLING_VIEW, "PUT": Action.BILLING_MANAGE}

    @extend_schema(
        responses={200: BudgetSerializer, 404: OpenApiResponse(description="No budget is set.")}
    )
    def get(self, request: Request, org_slug: str) -> Response:
        budget = Budget.objects.filter(org=self.access.org).first()
        if budget is None:
            raise Http404("No budget is set.")
        return Response(BudgetSerializer(budget).data)

    @extend_schema(
        request=BudgetSerializer,
        responses={
            200: BudgetSerializer,
            204: OpenApiResponse(description="`amount_micros` was null: no budget is set now."),
        },
        summary="Set the monthly budget (amount_micros null removes it)",
    )
    def put(self, request: Request, org_slug: str) -> Response:
        data = BudgetSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        budget = budget_set(
            org=self.access.org,
            actor=self.access.user,
            amount_micros=data.validated_data["amount_micros"],
            hard_limit=data.validated_data["hard_limit"],
        )
        if budget is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(BudgetSerializer(budget).data)
