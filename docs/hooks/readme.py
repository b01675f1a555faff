"""MkDocs hook: the site's home page is README.md, with its links into docs/
made relative to the site, so the front page is written once."""
from __future__ import annotations

import logging
import re
from pathlib import Path

from mkdocs.structure.files import File

_ROOT = Path(__file__).resolve().parents[2]


def on_files(files, config):
    text = (_ROOT / "README.md").read_text(encoding="utf-8")
    # [x](docs/page.md) -> [x](page.md): the site is built from docs/
    text = re.sub(r"\]\(docs/", "](", text)
    files.append(File.generated(config, "index.md", content=text))
    return files


class _Subscripts(logging.Filter):
    """Docstrings write indexing as x[i] or x[T, D/2]; Markdown reads `[i]` as a
    reference, and autorefs then warns that no API object is called `i`. Those
    are not links: keep the warning for anything that names a dotted path."""

    def filter(self, record: logging.LogRecord) -> bool:
        m = re.search(r"Could not find cross-reference target '([^']*)'", record.getMessage())
        return not (m and "." not in m.group(1))


def on_config(config):
    # a filter acts on the logger that emits: every autorefs module's own logger
    import mkdocs_autorefs._internal.plugin  # noqa: F401 (creates the loggers)
    import mkdocs_autorefs._internal.references  # noqa: F401
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith("mkdocs.plugins.mkdocs_autorefs"):
            logging.getLogger(name).addFilter(_Subscripts())
    return config
