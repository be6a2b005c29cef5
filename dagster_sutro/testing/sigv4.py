"""AWS Signature Version 4 presigned URLs: signing with botocore, verification from scratch.

The emulator signs URLs with botocore's ``S3SigV4QueryAuth`` (region ``auto``, service ``s3``,
``X-Amz-SignedHeaders=host``), as an S3 or R2 SDK does, but at the emulator clock's time.
Verification recomputes the signature from the request the storage server received, with its
own implementation of the canonical request. A request whose method, path, query or signed
headers differ from the signed ones therefore fails, as it does on S3 and R2.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from botocore.auth import SIGV4_TIMESTAMP, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ALGORITHM = "AWS4-HMAC-SHA256"
REGION = "auto"
SERVICE = "s3"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
MAX_EXPIRES_SECONDS = 604800

# How far in the future X-Amz-Date may lie before a request is rejected as not yet valid.
ALLOWED_CLOCK_SKEW_SECONDS = 900

_REQUIRED_PARAMETERS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
)


class SignatureError(Exception):
    """A presigned request failed verification.

    Attributes:
        status: The HTTP status S3 returns for this failure.
        code: The S3 error code, for example ``SignatureDoesNotMatch``.
        message: The S3 error message.
        expired: ``True`` when the only problem is that the URL expired.
        details: Extra elements for the XML error body, such as ``Expires``.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        expired: bool = False,
        details: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.expired = expired
        self.details = details or {}


@dataclass(frozen=True)
class VerifiedRequest:
    """The facts a verified presigned request carried.

    Attributes:
        signature: The request's ``X-Amz-Signature``.
        signed_at: When the URL was signed, in seconds since the epoch.
        expires_at: When the URL expires, in seconds since the epoch.
        signed_headers: The lower-case header names listed in ``X-Amz-SignedHeaders``.
    """

    signature: str
    signed_at: float
    expires_at: float
    signed_headers: tuple[str, ...]


class _ClockedS3QueryAuth(S3SigV4QueryAuth):
    """botocore's S3 presigner, signing at a given time instead of the system clock.

    ``add_auth`` repeats botocore's steps without its DEBUG logging, because that logging
    writes the signature to the log.
    """

    def __init__(self, credentials: Credentials, expires: int, signed_at: datetime.datetime):
        super().__init__(credentials, SERVICE, REGION, expires=expires)
        self._signed_at = signed_at

    def add_auth(self, request: Any) -> None:
        request.context["timestamp"] = self._signed_at.strftime(SIGV4_TIMESTAMP)
        self._modify_request_before_signing(request)
        canonical_request = self.canonical_request(request)
        string_to_sign = self.string_to_sign(request, canonical_request)
        signature = self.signature(string_to_sign, request)
        self._inject_signature_to_request(request, signature)


class PresignedUrlSigner:
    """Signs and verifies SigV4 query-string presigned URLs with one made-up key pair.

    Args:
        access_key_id: The access key id. A random one is made when omitted.
        secret_access_key: The secret key. A random one is made when omitted.
    """

    def __init__(
        self, access_key_id: str | None = None, secret_access_key: str | None = None
    ) -> None:
        self.access_key_id = access_key_id or "EMULATOR" + secrets.token_hex(6).upper()
        self._secret_access_key = secret_access_key or secrets.token_urlsafe(30)
        self._credentials = Credentials(self.access_key_id, self._secret_access_key)

    def presign(
        self, method: str, url: str, *, expires_in_seconds: int, signed_at: datetime.datetime
    ) -> str:
        """Presign ``url`` for one HTTP method.

        Args:
            method: The method the URL is valid for, ``GET`` or ``HEAD``.
            url: The object URL, path already percent-encoded, without a query string.
            expires_in_seconds: The URL's lifetime, 1 to 604800.
            signed_at: The signing time (timezone-aware).

        Returns:
            The presigned URL.
        """
        if not 1 <= expires_in_seconds <= MAX_EXPIRES_SECONDS:
            raise ValueError(
                f"expires_in_seconds must be 1 to {MAX_EXPIRES_SECONDS}, got {expires_in_seconds}"
            )
        utc_time = signed_at.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        request = AWSRequest(method=method.upper(), url=url)
        _ClockedS3QueryAuth(self._credentials, expires_in_seconds, utc_time).add_auth(request)
        return str(request.url)

    def verify(
        self,
        *,
        method: str,
        raw_path: str,
        raw_query: str,
        headers: Mapping[str, str],
        now: float,
    ) -> VerifiedRequest:
        """Check a received request against its presigned query parameters.

        Args:
            method: The request method.
            raw_path: The request path as received, percent-encoding kept.
            raw_query: The query string as received, without the leading ``?``.
            headers: The request headers, names in lower case.
            now: The current time in seconds since the epoch.

        Returns:
            The verified request's signing facts.

        Raises:
            SignatureError: If the request is not a valid, unexpired presigned request. The
                checks run in this order: the presence and form of the parameters, the access
                key, unsigned ``x-amz-*`` headers, the signature, and the expiry.
        """
        pairs = _split_query(raw_query)
        parameters = dict(pairs)
        present = [name for name in _REQUIRED_PARAMETERS if name in parameters]
        if not present:
            raise SignatureError(403, "AccessDenied", "Access Denied")
        if len(present) < len(_REQUIRED_PARAMETERS):
            raise SignatureError(
                400,
                "AuthorizationQueryParametersError",
                "Query-string authentication version 4 requires the X-Amz-Algorithm, "
                "X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, "
                "and X-Amz-Expires parameters.",
            )
        if parameters["X-Amz-Algorithm"] != ALGORITHM:
            raise SignatureError(
                400,
                "AuthorizationQueryParametersError",
                f'X-Amz-Algorithm only supports "{ALGORITHM}"',
            )

        scope, signed_at, expires_in = self._check_parameters(parameters)
        signed_headers = tuple(parameters["X-Amz-SignedHeaders"].split(";"))
        _check_headers_signed(headers, signed_headers)

        canonical_request = _canonical_request(method, raw_path, pairs, headers, signed_headers)
        string_to_sign = "\n".join(
            [
                ALGORITHM,
                parameters["X-Amz-Date"],
                scope,
                hashlib.sha256(canonical_request.encode()).hexdigest(),
            ]
        )
        expected = self._signature(scope.split("/")[0], string_to_sign)
        if not hmac.compare_digest(expected, parameters["X-Amz-Signature"]):
            raise SignatureError(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you "
                "provided. Check your key and signing method.",
            )

        expires_at = signed_at + expires_in
        if now > expires_at:
            raise SignatureError(
                403,
                "AccessDenied",
                "Request has expired",
                expired=True,
                details={
                    "X-Amz-Expires": str(expires_in),
                    "Expires": _iso_time(expires_at),
                    "ServerTime": _iso_time(now),
                },
            )
        if signed_at > now + ALLOWED_CLOCK_SKEW_SECONDS:
            raise SignatureError(403, "AccessDenied", "Request is not valid yet")
        return VerifiedRequest(
            signature=parameters["X-Amz-Signature"],
            signed_at=signed_at,
            expires_at=expires_at,
            signed_headers=signed_headers,
        )

    def _check_parameters(self, parameters: Mapping[str, str]) -> tuple[str, float, int]:
        """Validate credential, date and expiry parameters and return scope, time, lifetime."""
        access_key, _, scope = parameters["X-Amz-Credential"].partition("/")
        scope_parts = scope.split("/")
        if len(scope_parts) != 4 or scope_parts[3] != "aws4_request":
            raise SignatureError(
                400,
                "AuthorizationQueryParametersError",
                "Error parsing the X-Amz-Credential parameter; the Credential is mal-formed; "
                'expecting "<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".',
            )
        if not hmac.compare_digest(access_key, self.access_key_id):
            raise SignatureError(
                403,
                "InvalidAccessKeyId",
                "The AWS Access Key Id you provided does not exist in our records.",
            )

        try:
            signed_at = (
                datetime.datetime.strptime(parameters["X-Amz-Date"], SIGV4_TIMESTAMP)
                .replace(tzinfo=datetime.timezone.utc)
                .timestamp()
            )
        except ValueError:
            raise SignatureError(
                400,
                "AuthorizationQueryParametersError",
                "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"",
            ) from None

        expires_text = parameters["X-Amz-Expires"]
        if not expires_text.isdigit():
            raise SignatureError(
                400,
                "AuthorizationQueryParametersError",
                "X-Amz-Expires should be a number",
            )
        expires_in = int(expires_text)
        if expires_in > MAX_EXPIRES_SECONDS:
            raise SignatureError(
                400,
                "AuthorizationQueryParametersError",
                "X-Amz-Expires must be less than a week (in seconds) that is 604800",
            )
        return scope, signed_at, expires_in

    def _signature(self, date_stamp: str, string_to_sign: str) -> str:
        key = _hmac(f"AWS4{self._secret_access_key}".encode(), date_stamp)
        key = _hmac(key, REGION)
        key = _hmac(key, SERVICE)
        key = _hmac(key, "aws4_request")
        return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def _split_query(raw_query: str) -> list[tuple[str, str]]:
    """Split a raw query string into percent-decoded (name, value) pairs, order kept."""
    pairs = []
    for item in raw_query.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        pairs.append((unquote(name), unquote(value)))
    return pairs


def _check_headers_signed(headers: Mapping[str, str], signed_headers: tuple[str, ...]) -> None:
    if "host" not in signed_headers:
        raise SignatureError(
            400,
            "AuthorizationQueryParametersError",
            "X-Amz-SignedHeaders must contain host",
        )
    unsigned = sorted(
        name for name in headers if name.startswith("x-amz-") and name not in signed_headers
    )
    if unsigned:
        raise SignatureError(
            403,
            "AccessDenied",
            "There were headers present in the request which were not signed",
            details={"HeadersNotSigned": ", ".join(unsigned)},
        )


def _canonical_request(
    method: str,
    raw_path: str,
    pairs: list[tuple[str, str]],
    headers: Mapping[str, str],
    signed_headers: tuple[str, ...],
) -> str:
    # S3 encodes each path segment once, keeping "/" and the unreserved characters.
    canonical_uri = quote(unquote(raw_path), safe="/~")
    encoded_pairs = sorted(
        (quote(name, safe="-_.~"), quote(value, safe="-_.~"))
        for name, value in pairs
        if name != "X-Amz-Signature"
    )
    canonical_query = "&".join(f"{name}={value}" for name, value in encoded_pairs)
    canonical_headers = "".join(
        f"{name}:{' '.join(headers.get(name, '').split())}\n" for name in signed_headers
    )
    return "\n".join(
        [
            method.upper(),
            canonical_uri,
            canonical_query,
            canonical_headers,
            ";".join(signed_headers),
            UNSIGNED_PAYLOAD,
        ]
    )


def _iso_time(epoch_seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch_seconds, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
