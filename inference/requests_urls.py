"""URLs of the request log: the console's pages (under ``o/<org_slug>/``) and the REST API (under
``api/``)."""

from django.urls import path

from inference.views import requests, requests_api

org_urlpatterns = [
    path("requests/", requests.request_list, name="request_list"),
    path("requests/<str:request_id>/", requests.request_detail, name="request_detail"),
]

org = "orgs/<slug:org_slug>/"

api_urlpatterns = [
    path(org + "requests/", requests_api.RequestListView.as_view(), name="api_requests"),
    path(org + "refusals/", requests_api.RefusalListView.as_view(), name="api_refusals"),
    path(
        org + "requests/<str:request_id>/",
        requests_api.RequestDetailView.as_view(),
        name="api_request",
    ),
]
