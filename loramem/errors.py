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
