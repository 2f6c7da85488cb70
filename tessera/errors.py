"""Exceptions raised by tessera, with messages that say what to do.

    TesseraError
    ├── ConfigError          a recipe, option or factory is wrong: fix the named setting
    ├── DataError            a corpus or data folder is unusable: point at other data
    ├── ContributionRejected an upload was refused: its ``reason`` says why (HTTP 4xx)
    │   ├── MalformedContribution  not safetensors / wrong names, shapes, dtypes / not finite
    │   │   └── ClaimOutOfBounds   tokens, steps or compute time more than the lease allows
    │   ├── LeaseError             unknown, expired or foreign lease
    │   └── StaleContribution      based on a version too far behind: lease again
    ├── NotFound             a run, version, worker or blob does not exist
    ├── Conflict             the request contradicts the hub's state (a name taken, a module training)
    ├── Unauthorized         a missing, unknown or revoked token (HTTP 401)
    ├── Forbidden            a valid token without the right for this action (HTTP 403)
    │   └── QuotaExceeded    a provider's limit on this hub is reached (runs, workers, model size)
    ├── TooManyRequests      too many requests at once (HTTP 429): retry after ``retry_after_s``
    ├── HubUnavailable       the worker could not reach the hub after retrying
    └── HubFailed            the hub failed on a request (HTTP 500): its fault, not the request's

CLI exit codes: 0 success, 1 a TesseraError (message printed), 2 usage error,
130 interrupted with Ctrl-C.
"""

from __future__ import annotations


class TesseraError(Exception):
    """Base class of every error tessera raises on purpose."""

    http_status = 400
    code = "error"


class ConfigError(TesseraError):
    code = "config_error"


class DataError(TesseraError):
    code = "data_error"


class ContributionRejected(TesseraError):
    http_status = 422
    code = "contribution_rejected"


class MalformedContribution(ContributionRejected):
    code = "malformed_contribution"


class ClaimOutOfBounds(MalformedContribution):
    code = "claim_out_of_bounds"


class PayloadTooLarge(ContributionRejected):
    http_status = 413
    code = "payload_too_large"


class LeaseError(ContributionRejected):
    http_status = 409
    code = "lease_error"


class StaleContribution(ContributionRejected):
    http_status = 409
    code = "stale_contribution"


class NotFound(TesseraError):
    http_status = 404
    code = "not_found"


class Conflict(TesseraError):
    http_status = 409
    code = "conflict"


class Unauthorized(TesseraError):
    http_status = 401
    code = "unauthorized"


class Forbidden(TesseraError):
    http_status = 403
    code = "forbidden"


class QuotaExceeded(Forbidden):
    code = "quota_exceeded"


class TooManyRequests(TesseraError):
    http_status = 429
    code = "too_many_requests"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class HubUnavailable(TesseraError):
    code = "hub_unavailable"


class HubFailed(TesseraError):
    """HTTP 500: the hub failed on a request it should have answered; retrying will not help."""

    code = "hub_failed"
