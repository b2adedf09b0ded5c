"""Console pages and REST endpoints for the inference app."""
