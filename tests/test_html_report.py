"""``report.html``: one self-contained page from a report's Markdown (tables as HTML tables,
every figure inlined as a ``data:`` URI), and a headless Chromium rendering it with each
figure decoded."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import trainenv.findings.claims as F
from tests.helpers import markdown_tables
from tests.test_early_warning import synthetic_traces
from tests.test_findings import planted_outcomes, planted_stochasticity
from trainenv.audit.html import write_html
from trainenv.findings.config import quick_config
from trainenv.findings.report import write_findings

FIGURES = ("claim1_decoupling.png", "claim2_stochasticity.png", "claim3_detectors.png",
           "claim3_example.png")  # fmt: skip


class Page(HTMLParser):
    """What a page holds: its ``<img>`` sources, its tables (rows of cell texts, header row
    first) and the ``<body>`` element's attributes."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.body: dict[str, str | None] = {}
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        elif tag == "body":
            self.body = dict(attrs)
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("th", "td"):
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "td") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None


@pytest.fixture(scope="module")
def findings_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A findings report (four figures, a table per claim) from planted results."""
    findings = F.Findings(quick_config(), wall_s=60.0)
    findings.decoupling["supervised"] = F.decoupling(
        planted_outcomes(8, np.linspace(0.2, 0.9, 8)), n_boot=100
    )
    findings.buffering["supervised"] = planted_stochasticity([-0.05, -0.1, -0.15])
    findings.warning["supervised"] = F.early_warning(synthetic_traces(lead=4), 4, 0.05, 100)
    return write_findings(findings, tmp_path_factory.mktemp("findings"))


def test_the_page_holds_the_reports_tables_and_its_figures_inline(findings_report: Path) -> None:
    page_path = findings_report.with_suffix(".html")
    page = Page(page_path.read_text())
    markdown = findings_report.read_text()
    # Every figure the Markdown links, in order, inlined byte for byte: no file links left.
    assert re.findall(r"!\[[^]]*\]\(([^)]+)\)", markdown) == list(FIGURES)
    assert len(page.images) == len(FIGURES)
    for src, figure in zip(page.images, FIGURES):
        mime, _, payload = src.partition(";base64,")
        assert mime == "data:image/png"
        assert base64.b64decode(payload) == (findings_report.parent / figure).read_bytes()
    # Each Markdown table is an HTML table with the same cells, header row first.
    tables = markdown_tables(markdown)
    # The verdicts, the paper's claims against ours, a table per claim (claim 2: two).
    assert len(tables) == 6 and tables[0][0] == ["claim", "per paradigm", "overall"]
    assert page.tables == tables


def test_a_missing_figure_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    report.write_text("# R\n\n![a figure](figures/gone.png)\n")
    with pytest.raises(FileNotFoundError, match="figures/gone.png"):
        write_html(report)
    assert not (tmp_path / "report.html").exists()


def test_links_with_a_scheme_stay_and_unknown_figure_types_are_refused(tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    report.write_text("# R\n\n![remote](https://example.org/a.png)\n")
    assert Page(write_html(report).read_text()).images == ["https://example.org/a.png"]
    (tmp_path / "a.gif").write_bytes(b"GIF89a")
    report.write_text("# R\n\n![local](a.gif)\n")
    with pytest.raises(ValueError, match="'.gif' is not one of"):
        write_html(report)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Counts, once the page has loaded, the images the browser decoded (a broken data: URI loads as
# an image of width 0) and writes the count into the DOM that --dump-dom prints.
PROBE = """<script>addEventListener("load", () => {
  const images = [...document.images];
  document.body.dataset.decoded = images.filter(i => i.complete && i.naturalWidth > 0).length;
});</script>"""


def chromium(tmp_path: Path, *args: str) -> str:
    """Run headless Chromium with ``args`` (a fresh profile under ``tmp_path``); its stdout."""
    assert CHROMIUM is not None
    command = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'profile'}", *args]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed: apt-get install chromium")
def test_chromium_renders_the_page_with_every_figure(findings_report: Path, tmp_path: Path) -> None:
    page = findings_report.with_suffix(".html")
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", f"{PROBE}</body>"))
    dom = Page(chromium(tmp_path, "--dump-dom", probed.as_uri()))
    assert len(dom.images) == len(FIGURES)
    assert dom.body.get("data-decoded") == str(len(FIGURES))
    assert dom.tables == markdown_tables(findings_report.read_text())

    from PIL import Image

    shot = tmp_path / "page.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,3000", page.as_uri())
    with Image.open(shot) as image:
        assert image.size == (1200, 3000)
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours = np.unique(pixels, axis=0)
    non_white = (pixels < 245).any(axis=1).mean()
    # Text, table shading and the figures' blues and oranges: a blank or unstyled page has few.
    assert len(colours) > 200 and non_white > 0.05, (len(colours), non_white)
