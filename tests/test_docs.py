"""The front door and the manual: a README short enough to read, whose links all resolve, and
a documentation site whose reference pages are generated from the code (`mkdocs build
--strict`, which fails on a broken link or a page left out, runs in `make test`)."""

from __future__ import annotations

import re
import sys

from tests.helpers import ROOT

README_MAX_LINES = 150


def test_the_readme_is_short_and_every_link_in_it_resolves() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert local, "the README links into the manual"
    assert [link for link in local if not (ROOT / link).exists()] == []
    # A newcomer's path: README -> the tutorial -> a guide.
    assert "docs/tutorial.md" in local and any(link.startswith("docs/guides/") for link in local)
    tutorial = (ROOT / "docs" / "tutorial.md").read_text()
    assert re.search(r"\]\(guides/[\w-]+\.md", tutorial)


def test_the_reference_pages_are_generated_from_the_code() -> None:
    """Every config field, command option, entry point and gateable key appears on its page,
    built from the code at docs build time: a new field cannot be left out of the manual."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from reference_pages import PAGES

    from husai import names
    from husai.cli_args import build_parser
    from husai.config.sae import SAEConfig
    from husai.config.sweep.spec import SweepConfig

    config, cli, keys = (PAGES[f"reference/{p}.md"]() for p in ("config", "cli", "metric-keys"))
    assert all(f"| `{name}` |" in config for name in SAEConfig.model_fields)
    assert all(f"| `{name}` |" in config for name in SweepConfig.model_fields)
    assert "`bundle`" in config and "`husai sweep`" in cli and "`mlflow run`" in cli
    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices)
    assert all(f"### `husai {name}`" in cli for name in sub.choices)
    assert all(f"`{k}`" in keys for k in names.gateable_metrics())
