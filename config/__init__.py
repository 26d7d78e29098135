"""Settings, the provider catalog, the agent config model and the demo agents."""
