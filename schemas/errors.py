"""Errors raised by the event contract."""


class SchemaError(Exception):
    """Base class for contract errors."""


class SerializationError(SchemaError):
    """A message could not be encoded or decoded.

    Attributes:
        kind: ``undecodable`` when the bytes are not a Shaping message, ``invalid`` when they
            decode but break the contract (a missing field, a wrong value).
    """

    def __init__(self, message: str, kind: str = "undecodable") -> None:
        super().__init__(message)
        self.kind = kind
