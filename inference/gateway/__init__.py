"""The OpenAI-compatible gateway: a lean ASGI app on the hot path, free of Django's request cycle.

It authenticates keys, enforces limits and budgets, resolves routes, picks replicas, proxies to
vLLM servers or external endpoints, and meters every request, all from an in-memory snapshot of
the control plane that a background thread keeps fresh.
"""
