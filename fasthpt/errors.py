"""User-facing errors (the CLI prints them as one line and exits with status 2), how an
interruption is recognised, and the install line such errors give for the FFCV extra (read by the
loaders and by `fasthpt prep`)."""

import signal


class UserError(Exception):
    """Bad input from the user (a path, a flag, a config key): one clear line, exit code 2."""


# FFCV is an extra (pyproject.toml): pip builds it from source against these Debian packages
# (ffcv's setup.py: pkg-config --cflags --libs opencv4, then libturbojpeg).
FFCV_INSTALL = ("pip install 'fasthpt[ffcv]' after the Debian packages pkg-config libopencv-dev "
                "libturbojpeg0-dev (`make setup` installs both)")


# Importing Composer installs SIGINT/SIGTERM handlers that call sys.exit(128 + signum)
# (composer/core/engine.py), so a Ctrl-C after that arrives as SystemExit(130), not KeyboardInterrupt.
SIGNAL_EXITS = (128 + signal.SIGINT, 128 + signal.SIGTERM)


def interrupted_code(exc: BaseException) -> int | None:
    """The exit code if ``exc`` is a Ctrl-C or a SIGTERM in either form, else None (a run's
    Interrupted carries its own code)."""
    if isinstance(exc, SystemExit):
        return exc.code if exc.code in SIGNAL_EXITS else None
    return getattr(exc, "code", 130) if isinstance(exc, KeyboardInterrupt) else None


SHOWN_CHARS = 80  # of a value echoed in an error line: enough to recognise it, never a whole pasted file


def shown(value, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` for an error line, cut to ``limit`` characters with its full length said: a
    10 MB value pasted into an override must not become a 10 MB message."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(str(value))} characters)"


def clipped(message: str, limit: int = 2000) -> str:
    """``message`` with its middle elided when longer than ``limit`` (the start says what, the end
    usually how to fix it): the last guard before a message reaches the terminal."""
    if len(message) <= limit:
        return message
    half = limit // 2
    return f"{message[:half]} ...({len(message) - 2 * half} characters elided)... {message[-half:]}"
