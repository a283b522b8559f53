"""The `X-Voxtral-Ignored-Fields` header: which request fields the server did not use, safely."""

from __future__ import annotations

import re
from collections.abc import Sequence

HEADER = "X-Voxtral-Ignored-Fields"
# A field name goes into the header only as an RFC 9110 token (`tchar`s), so no name can break the header
# (CR, LF, NUL, non-Latin-1 characters) or need quoting.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
MAX_NAMES = 32  # names listed at most; the rest are counted
MAX_NAME_CHARS = 64  # a longer name is counted, not listed
MAX_HEADER_CHARS = 1024  # the listed names together, commas included


def ignored_fields_header(names: Sequence[str]) -> dict[str, str]:
    """`{HEADER: "a,b,c"}` for these ignored field names (empty when there are none): the names that are
    header tokens of at most MAX_NAME_CHARS, in order, at most MAX_NAMES and MAX_HEADER_CHARS together;
    any left out are counted in a last item `+N more`."""
    if not names:
        return {}
    listed: list[str] = []
    length = 0
    for name in names:
        if len(listed) == MAX_NAMES:
            break
        if len(name) <= MAX_NAME_CHARS and _TOKEN.fullmatch(name) and length + len(name) + 1 <= MAX_HEADER_CHARS:
            listed.append(name)
            length += len(name) + 1
    rest = len(names) - len(listed)
    return {HEADER: ",".join([*listed, *([f"+{rest} more"] if rest else [])])}
