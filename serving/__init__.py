"""Serving: the scorer that follows and hot-swaps the live version, and its HTTP service."""
