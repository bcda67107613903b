"""Exception hierarchy: every error a user can cause is a ``GradcamoError``."""


class GradcamoError(Exception):
    """Root of gradcamo's errors; the CLI prints these as one line and exits 2."""


class InputError(GradcamoError, ValueError):
    """A path, option or value given by the user is wrong.

    ``argument`` names the Python argument at fault, when there is one; the message then
    begins with that name, which the CLI replaces by the option's flag (``batch_size`` ->
    ``--batch-size``).
    """

    def __init__(self, message, *, argument=None):
        super().__init__(message)
        self.argument = argument


class UnreadableError(InputError):
    """A store, or an object in it, is missing, damaged or cannot be reached.

    In a plate, such a field is a failed work unit of ``score`` (the other fields are scored);
    anywhere else it is bad input like any other.
    """


class ExportError(GradcamoError, RuntimeError):
    """A model could not be turned into a gradcamo ONNX graph."""


class ValidationError(ExportError):
    """The exported graph disagrees with torch beyond tolerance."""


class ContractError(GradcamoError, ValueError):
    """A model file does not follow the gradcamo ONNX contract."""


class Interrupted(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM stopped a command; the CLI prints the message and exits 130.

    A ``BaseException`` like ``KeyboardInterrupt`` (no ``except Exception`` swallows it), but
    not one, so that click does not turn it into its own "Aborted!" and exit code 1.
    """


def first_line(error) -> str:
    """The first non-empty line of an exception's message, else its type's name (for one-line reports)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def describe(error) -> str:
    """``Type: first line of the message`` (``Type`` alone when there is no message), for causes in one-line reports."""
    name = type(error).__name__
    return f"{name}: {first_line(error)}" if str(error).strip() else name
