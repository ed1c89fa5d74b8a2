"""The manual: the MkDocs site builds with --strict (broken links and anchors fail it), the generated config reference
equals a fresh generation, every relative link of README.md and docs/*.md reaches a file (and README's anchors a
heading), and the Python API page's example runs as written."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from avmae import config_reference
from avmae.recipe.config import RunConfig
from tests.helpers import markdown_anchors, markdown_slug

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
# [text](target) outside code: a link's target has no spaces (Markdown allows none without <...>)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans, where brackets are code, not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _links(path: Path) -> list[str]:
    return LINK.findall(_prose(path.read_text(encoding="utf-8")))


def test_mkdocs_builds_strict(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                             str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-4000:]}"
    built = {path.relative_to(site).parent.as_posix() for path in site.rglob("index.html")}
    # every page of docs/ became a page of the site (index.md is the site's root)
    assert {"." if page.stem == "index" else page.stem for page in PAGES} <= built


def test_config_reference_is_current():
    committed = (DOCS / "config_reference.md").read_text(encoding="utf-8")
    assert committed == config_reference.reference(), (
        f"docs/config_reference.md is stale: regenerate it with `{config_reference.REGENERATE}`")


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    keys = []
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[field.name]):
            keys += _leaf_keys(hints[field.name], f"{prefix}{field.name}.")
        else:
            keys.append(f"{prefix}{field.name}")
    return keys


def test_config_reference_rows():
    """One row per key, with the default and the help of the field's own comment."""
    text = config_reference.reference()
    rows = {match.group(1): match.group(0) for match in re.finditer(r"^\| `([\w.]+)` \|.*$", text, flags=re.M)}
    leaves = _leaf_keys(RunConfig)
    assert len(leaves) > 100 and set(leaves) <= rows.keys()
    assert "`1000`" in rows["optim.steps"] and "optimizer steps of the whole run" in rows["optim.steps"]
    assert '`"large"`' in rows["model.encoder.size"]
    assert "`[0.25, 1.0]`" in rows["augment.crop_scale"]  # a tuple default reads as a YAML list
    assert "`null`" in rows["data.num_frames"] and "`int \\| None`" in rows["data.num_frames"]
    # a comment block above a field is its help, as the trailing comment is
    assert "DataLoader workers" in rows["data.workers"] and "half-cycle cosine" in rows["optim.schedule"]
    assert "## model.encoder" in text and "[model.encoder](#modelencoder)" in text


def test_relative_links_reach_files():
    missing = []
    for page in [ROOT / "README.md", *PAGES]:
        for target in _links(page):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL (https:, mailto:) or an anchor on the same page
            file, _, anchor = target.partition("#")
            resolved = (page.parent / file).resolve()
            if not resolved.exists():
                missing.append(f"{page.relative_to(ROOT)}: {target} (no file {resolved.relative_to(ROOT)})")
            elif page.name == "README.md" and anchor and resolved.suffix == ".md" and anchor not in markdown_anchors(resolved):
                # mkdocs checks the anchors between pages of docs/; README is outside the site
                missing.append(f"README.md: {target} (no heading #{anchor} in {file})")
    assert not missing, "broken relative links:\n" + "\n".join(missing)


def test_link_checker_sees_links():
    """The checker above finds the links it must check (so an empty finding means no broken link, not no link)."""
    readme_links = _links(ROOT / "README.md")
    assert "docs/index.md" in readme_links and "docs/config_reference.md" in readme_links
    assert markdown_slug("A GPU machine (`pipelines/gpu_check.sh`)") == "a-gpu-machine-pipelinesgpu_checksh"
    assert _links_in("see [a](b.md) and `[c](d.md)`\n```\n[e](f.md)\n```\n") == ["b.md"]


def _links_in(text: str) -> list[str]:
    return LINK.findall(_prose(text))


def test_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "bash pipelines/demo.sh" in readme and "bash pipelines/test.sh" in readme  # .ci/run calls the second
    assert len(readme.splitlines()) <= 160, "README.md is the front door: move detail into docs/"


def test_api_example_runs(tmp_path, monkeypatch):
    """docs/api.md's Python example, run as a reader would paste it (it writes export/ in the working folder)."""
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    assert blocks, "docs/api.md has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile("\n".join(blocks), str(DOCS / "api.md"), "exec"), namespace)
    assert (tmp_path / "export" / "model.safetensors").is_file()
    assert tuple(namespace["probabilities"].shape) == (2, 8)
    assert namespace["loaded"].label_names == [f"class_{i}" for i in range(8)]
