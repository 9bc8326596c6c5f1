"""User-facing errors: the command line prints them on one line, without a traceback."""


class KuosanError(Exception):
    """A mistake in the user's input (a path, a config value, a data set) rather than a bug.

    The message names the problem and, where possible, how to fix it. The CLI prints
    ``kuosan: error: <message>`` and exits with status 2.
    """
