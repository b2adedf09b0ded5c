from django.urls import path

from inference.api import views

d = "orgs/<slug:org_slug>/deployments/"
one = d + "<uuid:deployment_id>/"

urlpatterns = [
    path(d, views.DeploymentListView.as_view(), name="api_deployments"),
    path(one, views.DeploymentDetailView.as_view(), name="api_deployment"),
    path(one + "scale/", views.DeploymentScaleView.as_view(), name="api_deployment_scale"),
    path(one + "pause/", views.DeploymentPauseView.as_view(), name="api_deployment_pause"),
    path(one + "resume/", views.DeploymentResumeView.as_view(), name="api_deployment_resume"),
    path(one + "logs/", views.DeploymentLogsView.as_view(), name="api_deployment_logs"),
]
