"""Names that become one folder or file name: run and stage names, demo presets, shipped bases.

A name is one path component, so that what is written under it stays inside the folder the user
chose (run_dir=, --out, --data): a '/', a '\\', '..' or an absolute path where a name is expected
is refused in one line rather than followed.
"""

from __future__ import annotations

import re

from fasthpt.errors import UserError, shown

# NUL cannot be in a file name; other control characters (a newline) would split one-line messages.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_BYTES = 255  # NAME_MAX of Linux file systems (ext4, xfs, tmpfs)
RULE = "one folder name (not '.' or '..'; no '/', '\\', NUL or control characters; at most 255 bytes)"


def name_problem(value) -> str | None:
    """Why ``value`` is not a single folder name, or None."""
    text = value if isinstance(value, str) else None
    if text is None:
        return "not a string"
    if text in ("", ".", ".."):
        return "not a name"
    if "/" in text or "\\" in text:
        return "a path where a name is expected"
    if _CONTROL.search(text):
        return "holds a control character"
    if len(text.encode("utf-8", "surrogateescape")) > _MAX_BYTES:
        return "longer than a file name can be"
    return None


def check_name(what: str, value, hint: str = "") -> str:
    """``value`` when it is one folder name, else a UserError naming ``what`` and the rule."""
    problem = name_problem(value)
    if problem:
        raise UserError(f"{what} is {shown(value)}: {problem}; valid: {RULE}{hint}")
    return value
