"""The orchestrator: makes running engine replicas match what deployments ask for."""
