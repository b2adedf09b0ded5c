"""Route configuration and resolution: pure functions, used by the gateway and the console."""
