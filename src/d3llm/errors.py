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
