"""Replies as safe HTML: Markdown (markdown-it-py) with highlighted code blocks (Pygments), sanitised (nh3).

The page is public and the text comes from a model anyone can steer, so raw HTML in a reply is shown as text
(markdown-it's `html` option is off) and the rendered HTML is cleaned again with an allow-list: no script, no event
handler, no style attribute (table alignment becomes a class: the page's policy allows no inline style), no images
(which would load from anywhere), links only to http(s) and mailto, each with rel="nofollow noopener noreferrer".
"""

from __future__ import annotations

import re
from functools import cache

import nh3
from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.token import STANDARD_TYPES
from pygments.util import ClassNotFound

TAGS = {"p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "s", "code", "pre", "blockquote",
        "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td", "span"}
ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}}  # classes: allowed_classes below
ALIGN = re.compile(r'<(th|td) style="text-align:(left|center|right)">')  # markdown-it's table alignment
ALIGN_CLASSES = {"align-left", "align-center", "align-right"}
TOKEN_CLASSES = {c for c in STANDARD_TYPES.values() if c}
MAX_HIGHLIGHT = 50_000  # characters: beyond this a block is shown plain (highlighting is not free)


def _highlight(code: str, lang: str, _attrs: str) -> str:
    if not lang or len(code) > MAX_HIGHLIGHT:
        return ""  # markdown-it escapes it
    try:
        lexer = get_lexer_by_name(lang.split()[0])
    except ClassNotFound:
        return ""
    return highlight(code, lexer, HtmlFormatter(nowrap=True))


@cache
def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False, "highlight": _highlight})
    return md.enable(["table", "strikethrough"])


def render(text: str) -> str:
    """Markdown to HTML that is safe to put into the page as it is."""
    html = ALIGN.sub(r'<\1 class="align-\2">', _markdown().render(text))
    return nh3.clean(
        html,
        tags=TAGS,
        attributes=ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="nofollow noopener noreferrer",
        # Pygments' token classes on spans and the alignment classes on cells, nothing else the page uses
        allowed_classes={"span": TOKEN_CLASSES, "th": ALIGN_CLASSES, "td": ALIGN_CLASSES},
    )


@cache
def highlight_css() -> str:
    """The colours of highlighted code, light and dark (the theme the reader chose on the page, else the system's)."""
    light = HtmlFormatter(style="default").get_style_defs(".reply pre")
    # Dark when the reader chose it on the page, or when the system is dark and the reader did not choose light.
    chosen = HtmlFormatter(style="monokai").get_style_defs(':root[data-theme="dark"] .reply pre')
    system = HtmlFormatter(style="monokai").get_style_defs(':root:not([data-theme="light"]) .reply pre')
    return f"{light}\n{chosen}\n@media (prefers-color-scheme: dark) {{\n{system}\n}}\n"
