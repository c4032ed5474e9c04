"""Errors raised on a rig.

Every error a person at the rig can cause (a bad config file, a typo in a valve name, a missing
calibration) is a :class:`RigError` whose message names the offending entry, so the command
line prints it instead of a traceback.
"""


class RigError(Exception):
    """Base class for rig errors."""


class NoAssignmentError(RigError):
    """No assignment is known for a mouse, so no session can be configured."""


class ConfigError(RigError):
    """The rig config file is missing, unreadable or invalid."""


class PinMapError(ConfigError):
    """The pin map names an unknown device, uses a pin twice or lacks a required device."""


class CalibrationError(RigError):
    """A valve has no usable calibration for a reward given by volume."""


class ParameterError(RigError):
    """An assignment parameter has the wrong type or an impossible value."""


class HardwareError(RigError):
    """A device could not be opened (no GPIO on this machine, a pin already in use, ...)."""


class RigBusyError(RigError):
    """Another process already runs a session (or drains the outbox) on this rig."""


class BrokerUnreachableError(RigError):
    """Kafka did not answer; the rig works offline from its cache and outbox."""
