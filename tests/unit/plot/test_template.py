"""`dvc plots show` draws its vega plots without network: .dvc/config points it at
assets/dvc-plots.html, which carries Vega, Vega-Lite and Vega-Embed inline (DVC's own page loads
them from a CDN and, offline, draws none). Uses the plot sources committed under logs/ and
metrics/, so no stage runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from harclip.plot import template
from tests.support import REPO_ROOT

PLOT_CALL = re.compile(r"vegaEmbed\('#([^']+)'")


DRAWN = re.compile(r"<(?:svg|canvas)\b[^>]*\bclass=\"marks\"")


VEGA_PLOTS_IN_DVC_YAML = 11  # 5 linear, 3 confusion, 3 confusion_normalized


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    """The index.html plain `dvc plots show` writes for this repository."""
    out = tmp_path_factory.mktemp("dvc-plots")
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "plots", "show", "--out", str(out)],
                   cwd=REPO_ROOT, env=os.environ | {"DVC_NO_ANALYTICS": "1"},
                   capture_output=True, text=True, check=True, timeout=300)
    return out / "index.html"


def _chromium() -> str | None:
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


def undrawn_plots(page: Path, chromium: str, profile: Path) -> tuple[list[str], list[str]]:
    """The page's vega plots, and those of them with no canvas or svg that vega-embed drew,
    as headless Chromium (no network needed, none used) leaves the page."""
    ids = PLOT_CALL.findall(page.read_text(encoding="utf8"))
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=15000",
         "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, check=True, timeout=180).stdout
    starts = sorted((dom.find(f'<div id="{plot}"'), plot) for plot in ids)
    assert all(start >= 0 for start, _ in starts), "a plot's div is missing from the DOM"
    ends = [start for start, _ in starts[1:]] + [len(dom)]
    return ids, [plot for (start, plot), end in zip(starts, ends, strict=True)
                 if not DRAWN.search(dom, start, end)]


def test_dvc_plots_show_loads_nothing_from_the_network(page):
    html = page.read_text(encoding="utf8")
    assert not re.search(r"<script[^>]*\bsrc=", html)
    assert "https://cdn" not in html
    for library in ("window.vega=", "window.vegaLite=", "window.vegaEmbed="):
        assert library in html
    assert f"vl-convert-python=={version('vl-convert-python')}" in html
    assert len(PLOT_CALL.findall(html)) == VEGA_PLOTS_IN_DVC_YAML


def test_committed_template_is_what_the_generator_writes_now():
    committed = (REPO_ROOT / template.DEFAULT_OUT).read_text(encoding="utf8")
    assert committed == template.template(), \
        "assets/dvc-plots.html is stale: run `make plots-template`"


def test_chromium_draws_every_vega_plot(page, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium: apt-get install chromium")
    plots, undrawn = undrawn_plots(page, chromium, tmp_path / "profile")
    assert len(plots) == VEGA_PLOTS_IN_DVC_YAML
    assert undrawn == []
