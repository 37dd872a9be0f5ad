"""Bearer-token checks for streamrec's HTTP endpoints (``serve``, ``dashboard``, workers' ``/metrics``)."""

from __future__ import annotations

import hmac


def bearer_ok(header: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (always, when no token is set).
    The comparison takes the same time whatever the header holds."""
    if not token:
        return True
    expected = f"Bearer {token}".encode()
    return hmac.compare_digest((header or "").encode(), expected)


def bearer_header(token: str | None) -> dict[str, str]:
    """The header that :func:`bearer_ok` accepts (none without a token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}
