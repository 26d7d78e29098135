"""The REST control plane under /api: keys and workspaces, agents, providers, phone numbers, tools."""
