"""A griffe extension for the API page (mkdocs.yml, mkdocstrings ``extensions``).

weightidx's docstrings head their doctests ``Example:``; griffe's Google parser reads only
``Examples:`` as an examples section (rendered as code) and takes ``Example:`` for an
admonition, whose ``>>>`` lines Markdown turns into nested quotes. This reads the one as the
other; the docstrings themselves are unchanged.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", flags=re.MULTILINE)


class ExampleSections(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
