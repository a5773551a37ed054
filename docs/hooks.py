"""mkdocs hooks (``hooks:`` in mkdocs.yml): files the site shows that live outside docs/.

The HTML report's screenshot is kept once, in ``tests/data/demo_report.png`` (where the
refresh command on the report page writes it); the site serves it as ``img/demo_report.png``
without a second copy.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = {"img/demo_report.png": ROOT / "tests" / "data" / "demo_report.png"}


def on_files(files, config):
    for uri, path in OUTSIDE.items():
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
