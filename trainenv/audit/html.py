"""A report as one self-contained HTML page: ``report.html`` beside ``report.md``, rendered
from that Markdown with every figure it links inlined as a ``data:`` URI, so the page opens in
a browser, mails or uploads as a single file. The Markdown stays the one source of the report's
text (the audit's, the controller evaluation's and the findings')."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from xml.etree.ElementTree import Element

import markdown
from markdown.treeprocessors import Treeprocessor

__all__ = ["write_html"]

MIME_TYPES = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg"}

STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
       max-width: 72rem; margin: 2rem auto; padding: 0 1.5rem; }
h1, h2, h3 { line-height: 1.25; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .3rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 13px; display: block;
        overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: .3rem .6rem; text-align: left;
         vertical-align: top; font-variant-numeric: tabular-nums; }
td { white-space: nowrap; }  /* an estimate and its interval stay on one line */
th { background: #f0f3f6; }
tr:nth-child(even) td { background: #f8f9fa; }
img { max-width: 100%; height: auto; display: block; margin: 1rem 0; }
code { background: #eff1f3; padding: .1rem .3rem; border-radius: 4px; font-size: 90%;
       overflow-wrap: anywhere; }
"""


def write_html(report: Path) -> Path:
    """Write ``report.html`` beside the Markdown file ``report`` (usually ``report.md``) and
    return its path. Images the Markdown links by a path relative to its folder are read and
    inlined (PNG, SVG or JPEG); a linked figure that is missing is a ``FileNotFoundError``
    naming it, raised before anything is written."""
    text = report.read_text()
    md = markdown.Markdown(extensions=["tables"])
    # Priority 5: after markdown's inline processor (20) has made the <img> elements.
    md.treeprocessors.register(_InlineImages(md, report.parent), "trainenv_inline_images", 5)
    title = text.partition("\n")[0].lstrip("# ").strip() or report.stem
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body>\n{md.convert(text)}\n</body>\n</html>\n"
    )
    path = report.with_suffix(".html")
    path.write_text(page, encoding="utf-8")
    return path


def _data_uri(figure: Path) -> str:
    """``figure``'s bytes as a base64 ``data:`` URI of its type (by suffix: ``.png``, ``.svg``,
    ``.jpg``)."""
    mime = MIME_TYPES.get(figure.suffix.lower())
    if mime is None:
        raise ValueError(
            f"figure {figure}: suffix {figure.suffix!r} is not one of {sorted(MIME_TYPES)}"
        )
    return f"data:{mime};base64,{base64.b64encode(figure.read_bytes()).decode('ascii')}"


class _InlineImages(Treeprocessor):
    """Points every ``<img>`` that links a local file (relative to ``folder``) at a ``data:``
    URI of that file; links with a scheme (``http:``, ``data:``) are left alone."""

    def __init__(self, md: markdown.Markdown, folder: Path) -> None:
        super().__init__(md)
        self.folder = folder

    def run(self, root: Element) -> None:
        for img in root.iter("img"):
            src = img.get("src", "")
            if ":" in src:
                continue
            figure = self.folder / src
            if not figure.is_file():
                raise FileNotFoundError(f"the report links {src!r}, which is not in {self.folder}")
            img.set("src", _data_uri(figure))
