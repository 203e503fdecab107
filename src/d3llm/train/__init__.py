"""Training: objectives, data, configuration and the trainer behind `d3llm train`."""
