"""User-facing errors.

`D3llmError` is raised for anything a user can fix (a bad argument, a missing file, a
corrupted checkpoint). The CLI prints its message on one line and exits non-zero; library
users catch it like any exception. Internal invariants use `assert`, not this class.
"""


class D3llmError(Exception):
    """An error caused by user input, with a message that says what to change."""


class ModelLoadError(D3llmError):
    """A model folder, file or name could not be resolved or loaded."""


class TaskError(D3llmError):
    """A task name, split or data file is not usable."""


class DecodeSettingError(D3llmError):
    """A decode setting that is invalid, or that the method would ignore; `setting` names it
    (a flat setting name such as `threshold`, or "method")."""

    def __init__(self, message: str, setting: str | None = None):
        super().__init__(message)
        self.setting = setting
