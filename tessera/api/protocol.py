"""Constants of the wire protocol, and the exception behind each error code.

An error answer is ``{"error": code, "detail": message}`` (``messages.ErrorBody``) with the
HTTP status of the ``TesseraError`` raised at the hub; a client raises the same class again
from its code (``error_for``).
"""

from __future__ import annotations

from tessera.errors import (
    ClaimOutOfBounds,
    ConfigError,
    Conflict,
    ContributionRejected,
    DataError,
    Forbidden,
    LeaseError,
    MalformedContribution,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    StaleContribution,
    TesseraError,
    TooManyRequests,
    Unauthorized,
)

META_HEADER = "X-Tessera-Contribution"  # a contribution's JSON metadata, beside its safetensors body
ADAPTER_HEADER = "X-Tessera-Adapter"  # an adapter's JSON metadata, beside its safetensors body
MAX_NUMBER = 2**31 - 1  # version and round numbers in paths and queries
MAX_PROBE_BYTES = 64 << 20  # one `tessera probe` transfer, either way
ERRORS: dict[str, type[TesseraError]] = {
    cls.code: cls
    for cls in (
        ContributionRejected,
        MalformedContribution,
        ClaimOutOfBounds,
        PayloadTooLarge,
        LeaseError,
        StaleContribution,
        NotFound,
        Unauthorized,
        Forbidden,
        QuotaExceeded,
        TooManyRequests,
        ConfigError,
        DataError,
        Conflict,
    )
}


def error_for(code: str) -> type[TesseraError]:
    """The exception class of an error answer's code (``TesseraError`` for codes it does not know)."""
    return ERRORS.get(code, TesseraError)
