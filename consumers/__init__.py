"""The Kafka workers: the trainer (join, learn, publish versions) and the join stage, with what they share."""
