"""streamrec: streaming online learning for click-through-rate prediction."""

__version__ = "0.1.0"
