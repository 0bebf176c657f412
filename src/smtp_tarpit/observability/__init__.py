"""What operators see: structured logs, Prometheus metrics and the admin HTTP listener."""
