"""The hot path: frame sources, ring buffer, pipeline, statistics, events and configuration."""
