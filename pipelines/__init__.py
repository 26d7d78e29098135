"""From a typed agent config to a pipecat pipeline: one module per architecture, one provider registry."""
