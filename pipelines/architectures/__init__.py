"""One module per agent architecture, each exposing `build(agent, transport, ctx) -> CallPipeline`."""
