"""User-facing errors: the command line prints them on one line, without a traceback."""


class KuosanError(Exception):
    """A mistake in the user's input (a path, a config value, a data set) rather than a bug.

    The message names the problem and, where possible, how to fix it. The CLI prints
    ``kuosan: error: <message>`` and exits with status 2.
    """


def user_path(text, what: str = "path"):
    """``Path(text).expanduser()``, with one line for a ``~user`` that names no user on this machine."""
    from pathlib import Path

    try:
        return Path(text).expanduser()
    except RuntimeError:
        raise KuosanError(f"{what} {str(text)!r}: {str(text).split('/')[0]} names no user on this machine, so it has "
                          "no home directory to expand; give the path in full") from None


CACHE_ENV = "KUOSAN_CACHE"


def cache_root(*parts: str):
    """``$KUOSAN_CACHE`` (default ``~/.cache/kuosan``) joined with ``parts``: where kuosan keeps what it can
    remake (decoded data sets, latents, reference features, ONNX exports, compiled kernels). A ``~user`` in the
    variable that names no user gets one line, as at every other door that takes a path."""
    import os
    from pathlib import Path

    base = os.environ.get(CACHE_ENV)
    root = user_path(base, f"${CACHE_ENV}") if base else Path.home() / ".cache" / "kuosan"
    return root.joinpath(*parts)
