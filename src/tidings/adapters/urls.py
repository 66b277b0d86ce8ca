"""URL helpers shared by the adapters."""

from __future__ import annotations

import re

# ``user:password@`` in the authority (also with several hosts), and ``password=`` in a query.
_AUTHORITY_PASSWORD = re.compile(r"^([^:/?#]+://[^:/?#@]*):[^/?#]*@")
_QUERY_PASSWORD = re.compile(r"([?&](?:password|sslpassword)=)[^&#]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, safe to show in errors and logs."""
    redacted = _AUTHORITY_PASSWORD.sub(r"\1:***@", url, count=1)
    return _QUERY_PASSWORD.sub(r"\1***", redacted)
