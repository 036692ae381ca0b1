"""Typed domain errors. server/errors.py maps each to one HTTP status and the OpenAI shape."""


class LoramemError(Exception):
    """Base class; `param` names the offending request field when there is one."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(LoramemError):
    pass


class NotFound(LoramemError):
    pass


class ModelNotFound(NotFound):
    pass


class Conflict(LoramemError):
    pass


class EngineUnavailable(LoramemError):
    pass


class Unauthorized(LoramemError):
    """No API key, or one that is unknown or revoked."""


class Forbidden(LoramemError):
    """A valid key whose role does not allow the request."""


class QuotaExceeded(LoramemError):
    """The tenant holds as much as its quota allows; waiting does not help."""


class RateLimited(LoramemError):
    """Too many requests or tokens in this window; retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int, param: str | None = None) -> None:
        super().__init__(message, param)
        self.retry_after_s = retry_after_s


class Overloaded(RateLimited):
    """This gateway has no room right now (answered 503); retry after `retry_after_s`."""


class NameTaken(Conflict):
    """An engine already serves a new version's name (under other weights)."""


class LockLost(Conflict):
    """A worker's module lock expired or passed to another worker: it must not publish."""
