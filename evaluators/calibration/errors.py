"""What calibration raises."""

from __future__ import annotations

from evaluators.errors import AssayError, FileValidationError


class CalibrationError(AssayError):
    """Calibration cannot go on: unreachable data, a check that failed, an edit that did not hold."""

    code = "calibration-error"
    title = "Calibration failed"


class LabelledDataError(FileValidationError):
    """The labelled CSV is broken or does not fit the policy; names file, line and column."""

    code = "invalid-labelled-data"
    title = "Invalid labelled data"
