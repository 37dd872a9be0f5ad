"""What every part of streamrec shares: events, features, settings, Kafka/Redis access, metrics."""

__version__ = "0.1.0"
