"""The Flower integration (imports flwr, never torch)."""
