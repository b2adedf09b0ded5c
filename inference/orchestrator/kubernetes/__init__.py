"""The Kubernetes backend: a Deployment and a Service per model deployment (docs/operations.md)."""
