#!/usr/bin/env python3
"""Builds data/rust-book/corpus.jsonl, the demo corpus: prose passages of
*The Rust Programming Language* (Steve Klabnik and Carol Nichols, with
contributions from the Rust community; MIT OR Apache-2.0), as shipped by
Debian's `rust-doc` package, bookworm version 1.63.0+dfsg1-2 (the book of
https://doc.rust-lang.org/1.63.0/book/).

Usage:
    python3 scripts/make-corpus.py                 # apt-get download rust-doc=1.63.0+dfsg1-2
    python3 scripts/make-corpus.py --deb PATH.deb  # use a .deb already at hand
    python3 scripts/make-corpus.py --out FILE      # default: data/rust-book/corpus.jsonl

Python 3 standard library only, plus `apt-get` (unless --deb) and `dpkg-deb`.
The input is pinned by its sha256; the output is deterministic (same bytes
on every run).

Output: BEIR corpus format, one JSON object per line,
    {"_id": "<page stem>/<n>", "title": "<chapter> — <section> — <subsection>", "text": "..."}
  - pages: foreword.html, the chNN-MM-*.html chapter pages and the
    appendix-NN-*.html pages, in file-name order (which is the book's order);
  - `_id`: page file stem, "/", 0-based index of the passage within that page,
    e.g. "ch16-02-message-passing/3"; the passage comes from
    https://doc.rust-lang.org/1.63.0/book/<page stem>.html;
  - `title`: the chapter title (the h1 of the chapter's chNN-00 page; for the
    appendices, the page's own h2 "Appendix X: ..."), then the page's h2
    section, then the current h3/h4/h5 subsection, joined with " — "
    (repeated or missing parts left out);
  - `text`: prose only. Code blocks (<pre>), "Filename: ..." lines, listing
    and table captions, images and footnote markers are removed; inline
    <code> is kept as plain text; entities decoded; whitespace normalised.
    Table rows become "| cell | cell |" text (an image in a cell, the Ferris
    legend, by its alt text); a list item without final punctuation gets a
    period.

Passages: each section (split at h1..h5) is cut into passages of whole
paragraphs / list items / table rows, greedily, of about 60-200 words; a
paragraph is only split (at sentence boundaries) when it alone exceeds 250
words. A leftover under 25 words is merged into the previous passage of its
section when that stays under ~250 words, else dropped, unless it is the whole
section.
"""

import argparse
import hashlib
import html.parser
import json
import os
import re
import subprocess
import sys
import tempfile

PACKAGE = "rust-doc"
VERSION = "1.63.0+dfsg1-2"
DEB_NAME = "rust-doc_1.63.0+dfsg1-2_all.deb"
DEB_SHA256 = "96ef96fe6df87d939ca713bd7df3d15c2b778ccb892eca025c4ee504146f697b"
BOOK_DIR = "usr/share/doc/rust-doc/html/book"

PAGE_RE = re.compile(r"^(foreword|ch\d\d-\d\d-[a-z0-9-]+|appendix-\d\d(-[a-z0-9-]+)?)\.html$")

MIN_WORDS = 60      # aim: passages of at least this many words ...
MAX_WORDS = 200     # ... and at most this many
SPLIT_WORDS = 250   # a single paragraph longer than this is split at sentences
DROP_WORDS = 25     # passages shorter than this are merged or dropped

HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
# Elements whose start or end closes the current text unit.
BLOCKS = {"p", "li", "ul", "ol", "blockquote", "table", "thead", "tbody", "tr",
          "div", "pre", "dl", "dt", "dd", "hr", "br"}
# Elements whose whole content is dropped.
VOID = {"img", "hr", "br", "meta", "link", "input", "col", "area", "wbr", "source"}


def words(text):
    return len(text.split())


def norm(text):
    return re.sub(r"\s+", " ", text).strip()


class MainParser(html.parser.HTMLParser):
    """Collects, from a page's <main>, a list of events:
    ("h", level, text) for headings and ("u", text) for prose units
    (a paragraph, list item or table row)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.in_main = 0
        self.skip = 0           # depth inside skipped elements (pre, captions, ...)
        self.stack = []         # open elements inside <main>: (tag, skipped?)
        self.buf = []
        self.heading = None     # level of the open heading
        self.row = None         # cells of the open table row
        self.cell = None
        self.events = []

    def flush(self):
        text = norm("".join(self.buf))
        self.buf = []
        if text:
            self.events.append(("u", text))

    def handle_starttag(self, tag, attrs):
        if tag == "main":
            self.in_main += 1
            return
        if not self.in_main:
            return
        attrs = dict(attrs)
        cls = (attrs.get("class") or "").split()
        if tag in VOID:
            if tag == "br" and not self.skip:
                self.buf.append(" ")
            elif tag == "img" and not self.skip and self.cell is not None:
                # an image in a table cell (the Ferris legend): its alt text
                self.cell.append(attrs.get("alt") or "")
            return
        skipped = (tag == "pre"
                   or (tag == "span" and ("caption" in cls or "filename" in cls))
                   or (tag == "sup" and ("footnote-reference" in cls
                                          or "footnote-definition-label" in cls))
                   or tag in ("script", "style", "button", "svg", "nav"))
        self.stack.append((tag, skipped))
        if skipped:
            self.skip += 1
            return
        if self.skip:
            return
        if tag in HEADINGS:
            self.flush()
            self.heading = HEADINGS[tag]
        elif tag == "tr":
            self.flush()
            self.row = []
        elif tag in ("td", "th") and self.row is not None:
            self.cell = []
        elif tag in BLOCKS:
            self.flush()
        elif tag == "sup":
            self.buf.append("^")

    def handle_endtag(self, tag):
        if tag == "main":
            if self.in_main:
                self.flush()
                self.in_main -= 1
            return
        if not self.in_main or tag in VOID:
            return
        # Pop to the matching open element (tolerates unclosed children).
        while self.stack:
            t, skipped = self.stack.pop()
            if skipped:
                self.skip -= 1
            if t == tag:
                break
        else:
            return
        if self.skip or skipped:
            return
        if tag in HEADINGS:
            text = norm("".join(self.buf))
            self.buf = []
            self.events.append(("h", self.heading, text))
            self.heading = None
        elif tag in ("td", "th") and self.row is not None and self.cell is not None:
            self.row.append(norm("".join(self.cell)))
            self.cell = None
        elif tag == "tr" and self.row is not None:
            if any(self.row):
                self.events.append(("u", norm("| " + " | ".join(self.row) + " |")))
            self.row = None
        elif tag in BLOCKS:
            self.flush()

    def handle_data(self, data):
        if not self.in_main or self.skip:
            return
        if self.cell is not None:
            self.cell.append(data)
        elif self.row is None:
            self.buf.append(data)


def parse_page(path):
    with open(path, encoding="utf-8") as f:
        source = f.read()
    # Exponents: 2<sup>n - 1</sup> -> 2^(n - 1), 2<sup>7</sup> -> 2^7.
    source = re.sub(r"<sup>([^<]*)</sup>",
                    lambda m: "^(" + m.group(1) + ")" if " " in m.group(1).strip()
                    else "^" + m.group(1), source)
    p = MainParser()
    p.feed(source)
    p.close()
    if p.in_main or not p.events:
        raise SystemExit(f"{path}: no complete <main> content")
    return p.events


SENTENCE_RE = re.compile(r"(?<=[.!?:;])[”’\"')]*\s+(?=[A-Z“\"‘'(`0-9])")


def split_long(text):
    """Splits a paragraph over SPLIT_WORDS words into sentence groups of at
    most ~MAX_WORDS words."""
    if words(text) <= SPLIT_WORDS:
        return [text]
    sentences = [s for s in SENTENCE_RE.split(text) if s]
    out, cur = [], []
    for s in sentences:
        if cur and words(" ".join(cur + [s])) > MAX_WORDS:
            out.append(" ".join(cur))
            cur = []
        cur.append(s)
    if cur:
        out.append(" ".join(cur))
    return out


def terminate(unit):
    """Ends a unit without final punctuation (list items, mostly) with a
    period, so that units joined into a passage read as separate sentences."""
    if unit.startswith("|") or re.search(r"[.!?:;,)\]”\"'’…]$", unit):
        return unit
    return unit + "."


def group(units):
    """Greedy grouping of a section's units into passages."""
    pieces = [piece for u in units for piece in split_long(terminate(u))]
    passages, cur = [], []
    for piece in pieces:
        n = sum(words(x) for x in cur)
        if cur and n >= MIN_WORDS and n + words(piece) > MAX_WORDS:
            passages.append(cur)
            cur = []
        cur.append(piece)
    if cur:
        passages.append(cur)
    passages = [" ".join(p) for p in passages]
    if len(passages) > 1 and words(passages[-1]) < DROP_WORDS:
        tail = passages.pop()
        if words(passages[-1]) + words(tail) <= SPLIT_WORDS:
            passages[-1] += " " + tail
    return passages


def chapter_titles(book):
    """Chapter number -> h1 of its chNN-00 page."""
    titles = {}
    for name in sorted(os.listdir(book)):
        m = re.match(r"^ch(\d\d)-00-.*\.html$", name)
        if m:
            h1 = [e[2] for e in parse_page(os.path.join(book, name)) if e[0] == "h" and e[1] == 1]
            if h1:
                titles[m.group(1)] = h1[0]
    return titles


def build(book):
    pages = sorted(n for n in os.listdir(book) if PAGE_RE.match(n))
    # foreword first, then chapters, then appendices (the book's order)
    pages.sort(key=lambda n: (0 if n.startswith("foreword") else 1 if n.startswith("ch") else 2, n))
    chapters = chapter_titles(book)
    records = []
    for name in pages:
        stem = name[:-len(".html")]
        m = re.match(r"^ch(\d\d)-", name)
        chapter = chapters.get(m.group(1)) if m else None
        heads = {}          # level -> current heading text
        sections = []       # (title, [units])
        units = []

        def title():
            top = heads.get(1) or chapter
            if stem.startswith("appendix") and heads.get(2):
                top = None  # "Appendix A: Keywords" says it all
            sub = next((heads[l] for l in (5, 4, 3) if heads.get(l)), None)
            parts = []
            for part in (top, heads.get(2), sub):
                if part and part not in parts:
                    parts.append(part)
            return " — ".join(parts)

        current = title()
        for ev in parse_page(os.path.join(book, name)):
            if ev[0] == "h":
                if units:
                    sections.append((current, units))
                units = []
                level, text = ev[1], ev[2]
                heads = {l: t for l, t in heads.items() if l < level}
                heads[level] = text
                current = title()
            else:
                units.append(ev[1])
        if units:
            sections.append((current, units))
        n = 0
        for sec_title, sec_units in sections:
            if not sec_title:
                raise SystemExit(f"{name}: passage without a title")
            for text in group(sec_units):
                records.append({"_id": f"{stem}/{n}", "title": sec_title, "text": text})
                n += 1
    return records


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deb", help=f"an existing {DEB_NAME} (default: apt-get download it)")
    ap.add_argument("--out", default=os.path.join(root, "data", "rust-book", "corpus.jsonl"))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="make-corpus.") as tmp:
        deb = args.deb
        if deb is None:
            try:
                subprocess.run(["apt-get", "download", f"{PACKAGE}={VERSION}"], cwd=tmp,
                               check=True, stdout=sys.stderr)
            except (OSError, subprocess.CalledProcessError) as e:
                raise SystemExit(f"apt-get download {PACKAGE}={VERSION} failed ({e}); "
                                 f"get {DEB_NAME} (Debian bookworm) and pass it with --deb")
            deb = os.path.join(tmp, DEB_NAME)
        digest = sha256(deb)
        if digest != DEB_SHA256:
            raise SystemExit(f"{deb}: sha256 {digest}, expected {DEB_SHA256}")
        tree = os.path.join(tmp, "x")
        subprocess.run(["dpkg-deb", "-x", deb, tree], check=True)
        records = build(os.path.join(tree, BOOK_DIR))

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    with open(args.out, "wb") as f:
        f.write(data)
    counts = sorted(words(r["text"]) for r in records)
    print(f"{args.out}: {len(records)} passages, {len(data)} bytes, words "
          f"min {counts[0]} median {counts[len(counts) // 2]} max {counts[-1]}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
