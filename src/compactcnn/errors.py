"""The one exception type that means "the caller asked for something that cannot be done".

The CLI turns it into a single line on stderr and exit code 2; anything else is a bug and
keeps its traceback. Library users can catch it without also catching programming errors.
"""


class CompactCNNError(ValueError):
    """Bad input: an unknown name, a malformed argument, a file that is not what it claims."""


class ConfigMismatch(CompactCNNError):
    """A run folder holds a run of another configuration: never a method that "does not apply",
    so ``compare`` stops on it rather than reporting the row as skipped."""
