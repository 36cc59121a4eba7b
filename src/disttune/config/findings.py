"""The result type of every config check: a ``Finding`` (what is wrong, where, and how to fix it).

``disttune doctor``'s checks of the machine have their own (``doctor.Check``: a check that passed is a result
too, with what was seen).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    """One problem in one file.

    Attributes:
        severity: ``"error"`` when the run fails, or would run but not as written (a value silently
            ignored, a count silently changed, a feature silently off); ``"warning"`` when it runs as
            written but is probably not what the user wants.
        file: the file the problem is in (the accelerate YAML or the DeepSpeed JSON).
        key: dotted key path, e.g. ``deepspeed_config.zero_stage`` or ``zero_optimization.stage``.
        value: the offending value (``None`` when the key is missing).
        message: what is wrong.
        fix: how to fix it.
    """

    severity: str
    file: str
    key: str
    value: object
    message: str
    fix: str

    def to_dict(self) -> dict:
        """A JSON-ready dict (the value is kept if JSON can hold it, else its ``repr``)."""
        d = asdict(self)
        if not isinstance(self.value, (str, int, float, bool, type(None), list, dict)):
            d["value"] = repr(self.value)
        return d


def error(file: str, key: str, value: object, message: str, fix: str) -> Finding:
    """Shorthand for an error finding."""
    return Finding(ERROR, file, key, value, message, fix)


def warning(file: str, key: str, value: object, message: str, fix: str) -> Finding:
    """Shorthand for a warning finding."""
    return Finding(WARNING, file, key, value, message, fix)
