"""The service layer: the process around the worker: HTTP (http), Prometheus metrics (metrics), JSON logs (logs)."""
