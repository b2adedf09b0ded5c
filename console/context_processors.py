from django.http import HttpRequest


def console(request: HttpRequest) -> dict[str, object]:
    """The current org, the user's role in it and the orgs to switch between, for the layout."""
    user = getattr(request, "user", None)
    memberships = []
    if user is not None and user.is_authenticated:
        memberships = list(
            user.memberships.filter(org__closed_at=None).select_related("org").order_by("org__name")
        )
    return {
        "org": getattr(request, "org", None),
        "membership": getattr(request, "membership", None),
        "my_memberships": memberships,
    }
