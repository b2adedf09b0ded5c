"""URLs of the routes page (under ``o/<org_slug>/``) and the routes REST API (under ``api/``)."""

from django.urls import path

from inference.views import router, router_api, routes, routes_api

org_urlpatterns = [
    path("routes/", routes.route_list, name="route_list"),
    path("routes/new/", routes.route_new, name="route_new"),
    path("routes/try/", routes.route_try_view, name="route_try"),
    path("routes/<uuid:route_id>/", routes.route_edit, name="route_edit"),
    path("routes/<uuid:route_id>/delete/", routes.route_remove, name="route_delete"),
    path(
        "routes/<uuid:route_id>/scorer/upload/",
        router.route_scorer_upload_view,
        name="route_scorer_upload",
    ),
    path(
        "routes/<uuid:route_id>/scorer/remove/",
        router.route_scorer_remove_view,
        name="route_scorer_remove",
    ),
    path("routes/endpoints/new/", routes.endpoint_new, name="endpoint_new"),
    path("routes/endpoints/<uuid:endpoint_id>/", routes.endpoint_edit, name="endpoint_edit"),
    path(
        "routes/endpoints/<uuid:endpoint_id>/delete/",
        routes.endpoint_remove,
        name="endpoint_delete",
    ),
]

org = "orgs/<slug:org_slug>/"

api_urlpatterns = [
    path(org + "routes/", routes_api.RouteListView.as_view(), name="api_routes"),
    path(org + "routes/<uuid:route_id>/", routes_api.RouteDetailView.as_view(), name="api_route"),
    path(
        org + "routes/<uuid:route_id>/savings/",
        router_api.RouteSavingsView.as_view(),
        name="api_route_savings",
    ),
    path(
        org + "routes/<uuid:route_id>/requests/",
        router_api.RouteRequestsView.as_view(),
        name="api_route_requests",
    ),
    path(org + "endpoints/", routes_api.EndpointListView.as_view(), name="api_endpoints"),
    path(
        org + "endpoints/<uuid:endpoint_id>/",
        routes_api.EndpointDetailView.as_view(),
        name="api_endpoint",
    ),
]
