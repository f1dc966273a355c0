"""The one exception type for bad input from a user."""


class InputError(ValueError):
    """Bad input from the user (a path, an option, a file).

    Raised at the boundaries (CLI, job entrypoints, storage, package loading) with a message that
    names the value received and what is allowed; the CLI prints it on one line and exits 2.
    """


class RunFailed(RuntimeError):
    """A run (training, labeling) that stopped with an error after its inputs were accepted.

    The message says how to resume; the CLI prints it on one line and exits 1.
    """
