"""Exceptions raised by tessera, with messages that say what to do.

    TesseraError
    ├── ConfigError          a recipe, option or factory is wrong: fix the named setting
    ├── DataError            a corpus or data folder is unusable: point at other data
    ├── ContributionRejected an upload was refused: its ``reason`` says why (HTTP 4xx)
    │   ├── MalformedContribution  not safetensors / wrong names, shapes, dtypes / not finite
    │   ├── LeaseError             unknown, expired or foreign lease
    │   └── StaleContribution      based on a version too far behind: lease again
    ├── NotFound             a run, version, worker or blob does not exist
    ├── Unauthorized         a missing, unknown or revoked token (HTTP 401)
    ├── Forbidden            a valid token without the right for this action (HTTP 403)
    └── HubUnavailable       the worker could not reach the hub after retrying

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


class Unauthorized(TesseraError):
    http_status = 401
    code = "unauthorized"


class Forbidden(TesseraError):
    http_status = 403
    code = "forbidden"


class HubUnavailable(TesseraError):
    code = "hub_unavailable"
