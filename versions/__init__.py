"""Model versions in Redis: the immutable versions and their pointers, the quality gate, the champion."""
