"""Writes. Views and API endpoints call these; they validate, change state atomically and audit."""
