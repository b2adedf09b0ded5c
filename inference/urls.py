"""Console pages for deployments, under ``o/<org_slug>/deployments/``."""

from django.urls import path

from inference.views import deployments as views

one = "<uuid:deployment_id>/"

urlpatterns = [
    path("", views.deployment_list, name="deployment_list"),
    path("new/", views.deployment_create_view, name="deployment_create"),
    path(one, views.deployment_detail, name="deployment_detail"),
    path(one + "logs/", views.deployment_logs, name="deployment_logs"),
    path(one + "edit/", views.deployment_edit, name="deployment_edit"),
    path(one + "scale/", views.deployment_scale_view, name="deployment_scale"),
    path(one + "pause/", views.deployment_pause_view, name="deployment_pause"),
    path(one + "resume/", views.deployment_resume_view, name="deployment_resume"),
    path(one + "delete/", views.deployment_delete_view, name="deployment_delete"),
]
