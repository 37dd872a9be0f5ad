"""Stream consumers: prequential evaluation, the trainer worker, the joiner, the weight publisher."""
