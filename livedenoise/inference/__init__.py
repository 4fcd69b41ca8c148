"""Restoration: the engine protocol and backends, the networks, model files and tiling."""
