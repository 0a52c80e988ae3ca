"""mkdocs hooks (mkdocs.yml `hooks:`): the generated reference pages
(`scripts/reference_pages.py`) and the CHANGELOG join the site as pages made at build time,
so nothing generated is ever committed and nothing outside docs/ is copied by hand."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from reference_pages import PAGES  # noqa: E402


def on_files(files: Files, config: Any) -> Files:
    for uri, make in PAGES.items():
        files.append(File.generated(config, uri, content=make()))
    changelog = (ROOT / "CHANGELOG.md").read_text()
    files.append(File.generated(config, "changelog.md", content=changelog))
    return files
