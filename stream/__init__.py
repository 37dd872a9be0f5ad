"""The ground floor every other part stands on: errors, settings, events, features, streaming quality
metrics, Kafka and Redis access, Prometheus plumbing and the worker registry."""
