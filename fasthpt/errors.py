"""User-facing errors. The CLI prints these as one line and exits with status 2."""


class UserError(Exception):
    """Bad input from the user (a path, a flag, a config key): one clear line, exit code 2."""
