from django.urls import path

from billing.api import views

org = "orgs/<slug:org_slug>/"

urlpatterns = [
    path(org + "usage/", views.UsageView.as_view(), name="api_usage"),
    path(org + "spend/", views.SpendView.as_view(), name="api_spend"),
    path(org + "budget/", views.BudgetView.as_view(), name="api_budget"),
]
