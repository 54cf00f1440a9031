"""`webhook_url` on every job request: where the service POSTs the job once it ends (docs/service.md, Webhooks)."""

import unicodedata
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, StringConstraints, WithJsonSchema

from fishersft.contract.base import RequestModel, no_surrogates

MAX_URL = 2000


def _http_url(value: str) -> str:
    """An absolute http(s) URL with a host and no credentials: the host is what the allow-list checks. Spaces and
    control characters are refused, not stripped as urlsplit strips tabs and newlines: the allow-list would check
    another URL than the one stored (and an HTTP client refuses them at delivery)."""
    bad = next((c for c in value if c.isspace() or unicodedata.category(c) == "Cc" or c == "\ufeff"), None)
    if bad is not None:
        raise ValueError(f"a URL holds no spaces or control characters: found {bad!r} at {value.index(bad)}")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  # raises on a port that is not a number in range
    except ValueError as e:
        raise ValueError(f"not a URL: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an absolute http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials in the URL are not sent: leave out `user:password@`")
    return value


PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
SPACES = r"\s\x00-\x1f\x7f-\x9f"
"""For a character class: whitespace (what ECMA's `\\s` matches, U+FEFF included) and control characters (Unicode's
Cc), which `_http_url` refuses in a URL."""
URL_PATTERN = rf"^https?://[^{SPACES}/?#@:\[\]]+(:{PORT})?([/?#][^{SPACES}]*)?$"
"""What the schema says a webhook_url is: an http(s) URL with a host and no credentials (IPv6 literals aside,
which `_http_url` takes too). Every string it matches is accepted by `_http_url`, so a client generated from the
schema is not refused on the URL's form."""

WebhookUrl = Annotated[
    str,
    StringConstraints(max_length=MAX_URL),
    AfterValidator(no_surrogates),
    AfterValidator(_http_url),
    WithJsonSchema({"type": "string", "maxLength": MAX_URL, "pattern": URL_PATTERN}, mode="validation"),
]


class WebhookOptions(RequestModel):
    """Where to be told that the job ended."""

    webhook_url: WebhookUrl | None = Field(
        None,
        description="On a terminal state (succeeded, failed, cancelled) the service POSTs "
        '`{"type": "job.succeeded" | "job.failed" | "job.cancelled", "job": <this job\'s body>}` here, signed in '
        "the `Fishersft-Signature` header (docs/service.md, Webhooks); a non-2xx answer or a timeout is retried with "
        "backoff, redirects are not followed. Its host must be one the service allows (FISHERSFT_WEBHOOK_HOSTS), "
        "else 422. Default: no webhook.",
    )
