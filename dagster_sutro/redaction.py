"""Masking of presigned-URL credentials in text, log records and exceptions.

A presigned URL is a bearer credential until it expires, so every log line and exception this
package creates passes through :func:`redact_text` first. The same function backs a logging
filter that is attached to urllib3's loggers, because urllib3 logs full request paths, query
string included, at DEBUG level.
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import parse_qsl, urlsplit

REDACTED = "REDACTED"

# Query parameters that carry a signature, a credential scope or a session token, for S3/R2
# (SigV4 and SigV2), Google Cloud Storage and Azure SAS URLs. Matched case-insensitively.
CREDENTIAL_QUERY_PARAMETERS = (
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "signature",
    "awsaccesskeyid",
    "x-goog-signature",
    "x-goog-credential",
    "googleaccessid",
    "sig",
    "token",
)

_PARAMETER_PATTERN = re.compile(
    r"(?P<name>(?<![A-Za-z0-9_-])(?:"
    + "|".join(re.escape(name) for name in CREDENTIAL_QUERY_PARAMETERS)
    + r"))(?P<sep>=|%3D)(?P<value>[^&\s\"'<>#]*)",
    re.IGNORECASE,
)

_registry_lock = threading.Lock()
_registered_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Add a value (an API key, a signature) that must be masked wherever it appears.

    Args:
        value: The secret. Values shorter than 8 characters are ignored, because masking
            them would garble ordinary text.
    """
    if value and len(value) >= 8:
        with _registry_lock:
            _registered_secrets.add(value)


def register_presigned_url(url: str) -> None:
    """Register the credential parameters of a presigned URL as secrets.

    Args:
        url: A presigned URL as issued by the Sutro API.
    """
    for name, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if name.lower() in CREDENTIAL_QUERY_PARAMETERS:
            register_secret(value)


def redact_text(text: str) -> str:
    """Mask credential query parameters and registered secrets in any text.

    Args:
        text: A message, URL, exception text or log line.

    Returns:
        The text with every credential value replaced by ``REDACTED``.
    """
    redacted = _PARAMETER_PATTERN.sub(
        lambda match: f"{match['name']}{match['sep']}{REDACTED}", text
    )
    with _registry_lock:
        secrets = sorted(_registered_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in redacted:
            redacted = redacted.replace(secret, REDACTED)
    return redacted


def redact_url(url: str) -> str:
    """Mask the credential parts of a presigned URL, keeping scheme, host, path and the rest.

    Args:
        url: A presigned URL.

    Returns:
        The URL with ``X-Amz-Signature``, ``X-Amz-Credential``, ``X-Amz-Security-Token`` and
        their equivalents for other stores replaced by ``REDACTED``.
    """
    return redact_text(url)


def describe_url(url: str) -> str:
    """Describe a URL for a log line or message: scheme, host and path, no query string.

    Args:
        url: Any URL, presigned or not.

    Returns:
        ``scheme://host/path`` of the URL.
    """
    parts = urlsplit(url)
    return redact_text(f"{parts.scheme}://{parts.netloc}{parts.path}")


class RedactingFilter(logging.Filter):
    """A logging filter that masks credentials in a record's message and arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place so that it carries no credential.

        Args:
            record: The record about to be emitted.

        Returns:
            Always ``True``: the record is kept, only its text changes.
        """
        try:
            message = record.getMessage()
        except Exception:  # A record with bad arguments is left for logging to report.
            return True
        redacted = redact_text(message)
        if redacted != message or record.args:
            record.msg = redacted
            record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            # Formatting the traceback here lets the masked text replace the raw one.
            formatter = logging.Formatter()
            record.exc_text = redact_text(formatter.formatException(record.exc_info))
            record.exc_info = None
        return True


# urllib3 logs each request line, the query string included, on these loggers.
URLLIB3_LOGGER_NAMES = (
    "urllib3",
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.response",
    "urllib3.util.retry",
    "requests",
)

_filter = RedactingFilter()
_filter_installed = False


def install_log_redaction() -> None:
    """Attach the redacting filter to urllib3's and requests' loggers, once per process.

    A filter on a logger applies only to records created on that very logger, so each logger
    that emits request lines gets its own reference to the same filter.
    """
    global _filter_installed
    with _registry_lock:
        if _filter_installed:
            return
        for name in URLLIB3_LOGGER_NAMES:
            logging.getLogger(name).addFilter(_filter)
        _filter_installed = True
