"""Event sources: log-format readers, the synthetic generator, and the replay producer."""
