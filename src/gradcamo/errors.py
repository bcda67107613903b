"""Exception hierarchy: every error a user can cause is a ``GradcamoError``."""


class GradcamoError(Exception):
    """Root of gradcamo's errors; the CLI prints these as one line and exits 2."""


class InputError(GradcamoError, ValueError):
    """A path, option or value given by the user is wrong."""


class ExportError(GradcamoError, RuntimeError):
    """A model could not be turned into a gradcamo ONNX graph."""


class ValidationError(ExportError):
    """The exported graph disagrees with torch beyond tolerance."""


class ContractError(GradcamoError, ValueError):
    """A model file does not follow the gradcamo ONNX contract."""
