"""The model-free fusion: clean the AltText, keep what it knows that the VeC lacks.

    alt: "Herschel Settlement Backpack - Khaki/Burgundy | Free Shipping <br>"
    vec: "a brown backpack on a white background"
    →    "a brown backpack on a white background, Herschel Settlement Backpack, Khaki/Burgundy"

1. `clean_alt` strips what is not about the image: HTML tags and entities,
   URLs and domains, file names, camera file stems, shop and stock-photo
   boilerplate, bracketed metadata, sizes and SKU codes; it un-slugs
   `words-joined-by-hyphens`.
2. `salient` finds the named things in what is left: runs of capitalized,
   mixed-case or numeric words ("Golden Gate Bridge", "iPhone 12 Pro",
   "1960s"), with a number's unit ("50 cm"), minus runs whose words the VeC
   already says.
3. `fuse` appends them to the VeC: "<VeC>, <named thing>, <named thing>".

It is the baseline an LLM rewrite must beat, and the default when no model is
given. Everything here runs per record at tens of thousands of records per
second: regexes are compiled once, and the costly ones are guarded by cheap
substring tests.
"""

from __future__ import annotations

import html
import re

MAX_PHRASES = 4
MAX_ADDED_WORDS = 12

_TAG = re.compile(r"<[^<>]{0,300}>")
_URL = re.compile(r"(?:\b(?:https?|ftp)://|\bwww\.)\S+", re.IGNORECASE)
_DOMAIN = re.compile(
    r"\b[\w-]+(?:\.[\w-]+)*\.(?:com|net|org|info|biz|co\.uk|co|uk|de|fr|nl|ru|jp|cn|it|es|au|ca|in|io|us)\b",
    re.IGNORECASE,
)
_FILE = re.compile(
    r"\b[\w.-]*\w\.(?:jpe?g|png|gif|webp|bmp|tiff?|svg|heic|pdf|html?|php|aspx?|mp4|mov|avi|docx?|zip)\b",
    re.IGNORECASE,
)
_CAMERA = re.compile(r"\b(?:IMG|DSC[NF]?|DCIM|PXL|MVIMG|GOPR|P)[_-]?\d{3,}\w*\b", re.IGNORECASE)
_BRACKETED = re.compile(r"\[[^\]]{0,120}\]|\{[^}]{0,120}\}")
_BOILERPLATE = re.compile(
    r"\b(?:stock\s+(?:photos?|images?|photography|vectors?|illustrations?|footage|pictures?)"
    r"|royalty[\s-]*free|hi[\s-]*res|high[\s-]*res(?:olution)?|free\s+shipping|buy\s+(?:it\s+)?now"
    r"|shop\s+now|order\s+now|add\s+to\s+(?:cart|basket)|(?:in|out\s+of)\s+stock|best\s+prices?"
    r"|(?:for|on)\s+sale|hot\s+sale|new\s+arrivals?|click\s+here|pre[\s-]?order|wholesale"
    r"|free\s+(?:delivery|returns)|(?:image|picture|photo)s?\s+of|cheap|discount(?:ed)?"
    r"|\d+\s*%\s*off|(?:etsy|amazon|ebay|aliexpress|alibaba|walmart|pinterest|shutterstock"
    r"|alamy|dreamstime|istock(?:photo)?|123rf|depositphotos|getty\s+images|vectorstock"
    r"|fotolia|adobe\s+stock|bigstock|canstock(?:photo)?)(?:\.com)?)\b",
    re.IGNORECASE,
)
_SIZE = re.compile(
    r"\b\d+(?:[.,]\d+)?\s*[x×*]\s*\d+(?:[.,]\d+)?(?:\s*[x×*]\s*\d+(?:[.,]\d+)?)?"
    r"(?:\s*(?:cm|mm|in|inch(?:es)?|px|pixels?|ft|m)\b|\")?"
    r"|\bsizes?\s*:?\s*(?:[2-6]?x{0,3}[sml]|\d+)(?:\s*/\s*(?:[2-6]?x{0,3}[sml]|\d+))*\b"
    r"|\b[2-6]?x{1,3}[sl]\b",
    re.IGNORECASE,
)
_SKU_LABEL = re.compile(
    r"\b(?:(?:sku|upc|ean|isbn|asin)\s*[#:]?"
    r"|(?:item|art(?:icle)?|ref|part|style|product|model|order|stock)"
    r"(?:\s*(?:code|no\.?|nr\.?|number)\s*[#:]?|\s*[#:]))"
    r"\s*[\w./-]*\d[\w./-]*|\bcode\s*[#:]?\s*[\w./-]*\d[\w./-]*",
    re.IGNORECASE,
)
_CODE = re.compile(r"\b(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[A-Za-z0-9][\w-]{5,}\b|\b\d{7,}\b")
_LETTER_DIGIT = re.compile(r"[A-Za-z](?=\d)|\d(?=[A-Za-z])")
_SLUG = re.compile(r"[-_]+")
_SEP = re.compile(r"\s+(?:[|•·»«~]+|[-–—]+|::+)\s+|\s*[|•»]\s*|\s+[-–—]\s*|\s*[–—]\s+")
_SEP_HINT = re.compile(r"[|•·»«~–—]| -|- |::")
_DIGIT = re.compile(r"\d")
_DOT_SUFFIX = re.compile(
    r"\.(?:jpe?g|png|gif|webp|bmp|tiff?|svg|heic|pdf|html?|php|aspx?|mp4|mov|avi|docx?|zip"
    r"|com|net|org|info|biz|co|uk|de|fr|nl|ru|jp|cn|it|es|au|ca|in|io|us)\b",
    re.IGNORECASE,
)
# Cheap first look (no word boundaries, lower-cased text) before the costly _BOILERPLATE.
_BOILERPLATE_HINT = re.compile(
    r"stock|royalty|res|ship|buy|shop|order|cart|basket|sale|arrival|click|free|image|picture"
    r"|photo|cheap|discount|%|etsy|amazon|ebay|ali|walmart|pinterest|shutter|alamy|dreams"
    r"|istock|123rf|deposit|getty|vector|fotolia|adobe|bigstock|canstock"
)
_EDGE = " \t,;:.!?|/\\-–—_*#+~'\""


def _is_code(match: re.Match) -> str:
    """An SKU-like token: long, digit-heavy, letters and digits interleaved ("B07XJ8C8F3")."""
    token = match.group()
    if token.isdigit():
        return " "  # 7+ digits: an item number, not a year or a price
    digits = sum(c.isdigit() for c in token)
    if digits >= 3 and len(_LETTER_DIGIT.findall(token)) >= 2:
        return " "
    return token


def clean_alt(alt: str) -> str:
    """The AltText without markup, links, file names, shop boilerplate and codes."""
    text = alt
    if "<" in text:
        text = _TAG.sub(" ", text)
    if "&" in text:
        text = html.unescape(text)
    if "://" in text or "www." in text or "WWW." in text:
        text = _URL.sub(" ", text)
    if _DOT_SUFFIX.search(text):
        text = _FILE.sub(" ", text)
        text = _DOMAIN.sub(" ", text)
    if "[" in text or "{" in text:
        text = _BRACKETED.sub(" ", text)
    if " " not in text.strip() and ("-" in text or "_" in text):
        text = _SLUG.sub(" ", text)  # a slug: words-joined-by-hyphens
    low = text.lower()
    if _BOILERPLATE_HINT.search(low):
        text = _BOILERPLATE.sub(" ", text)
    if _DIGIT.search(text):
        text = _CAMERA.sub(" ", text)
        text = _SKU_LABEL.sub(" ", text)
        text = _SIZE.sub(" ", text)
        text = _CODE.sub(_is_code, text)
    elif "size" in low or "xl" in low or "xs" in low:
        text = _SIZE.sub(" ", text)
    if _SEP_HINT.search(text):
        parts = [" ".join(p.split()).strip(_EDGE) for p in _SEP.split(text)]
        text = ", ".join(p for p in parts if p)
    else:
        text = " ".join(text.split())
    return text.strip(_EDGE)


# -- salient content ----------------------------------------------------------

# Lower-case words that may sit inside a name ("Bank of America", "Wisin y Yandel").
_JOINERS = frozenset(
    [
        "of",
        "de",
        "del",
        "la",
        "le",
        "les",
        "du",
        "da",
        "di",
        "von",
        "van",
        "der",
        "den",
        "y",
        "&",
        "and",
        "the",
    ]
)
# Capitalized words that name nothing on their own (title case, shop words).
_GENERIC = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "of",
        "for",
        "to",
        "in",
        "on",
        "at",
        "by",
        "with",
        "from",
        "how",
        "what",
        "why",
        "when",
        "new",
        "best",
        "top",
        "free",
        "sale",
        "hot",
        "great",
        "cute",
        "beautiful",
        "amazing",
        "set",
        "pack",
        "lot",
        "image",
        "photo",
        "picture",
        "pic",
        "view",
        "vector",
        "illustration",
        "background",
        "design",
        "ideas",
        "idea",
        "diy",
        "this",
        "that",
        "these",
        "my",
        "your",
        "our",
        "is",
        "are",
        "premium",
        "quality",
        "original",
        "official",
        "custom",
        "product",
        "products",
        "item",
        "shop",
        "store",
        "online",
    ]
)
_UNITS = frozenset(
    [
        "cm",
        "mm",
        "m",
        "km",
        "kg",
        "g",
        "mg",
        "l",
        "ml",
        "oz",
        "lb",
        "lbs",
        "in",
        "inch",
        "inches",
        "ft",
        "ml",
        "mah",
        "mb",
        "gb",
        "tb",
        "mp",
        "hp",
        "w",
        "kw",
        "v",
        "years",
        "year",
        "yrs",
        "old",
        "pcs",
        "pieces",
        "st",
        "nd",
        "rd",
        "th",
    ]
)
_WORD = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|[^\s,;:!?()\"“”]+|[,;:!?()\"“”]")
_BREAK = frozenset(',;:!?()"“”')
_CLAUSE = frozenset(":!?")
_CONTENT = re.compile(r"[a-z0-9]+")


def _kind(word: str) -> int:
    """2: a name on its own (digits, inner capitals: 2019, iPhone, NFL, P20); 1: Capitalized; 0: neither."""
    if word[0].isdigit():
        return 2
    inner = word[1:]
    if not (inner.islower() and inner.isalpha()) and (
        inner != inner.lower() or any(c.isdigit() for c in inner)
    ):
        return 2
    return 1 if word[0].isupper() else 0


def salient(text: str, known: set[str]) -> list[str]:
    """Named things in cleaned AltText `text` whose words are not all in `known` (the VeC's).

    A clause's first word is capitalized anyway, so on its own it names nothing
    ("Glass jug of milk"); it joins a name only when the next word continues it
    ("Golden Gate Bridge").
    """
    phrases: list[str] = []
    seen: set[str] = set()
    run: list[str] = []
    tentative = False  # the run is one clause-initial Capitalized word so far
    first = True
    for word in _WORD.findall(text):
        if word in _BREAK:
            if run and not (tentative and len(run) == 1):
                _close(run, known, phrases, seen)
            run, tentative, first = [], False, word in _CLAUSE
            continue
        word = word.strip(_EDGE)
        if not word:
            continue
        lower = word.lower()
        kind = _kind(word)
        if kind and lower not in _GENERIC:
            if first and kind == 1:
                tentative = True
            elif tentative and len(run) == 1:
                tentative = False
            run.append(word)
        elif run and (lower in _JOINERS or (lower in _UNITS and run[-1][-1].isdigit())):
            run.append(word)
        elif run:
            if not (tentative and len(run) == 1):
                _close(run, known, phrases, seen)
            run, tentative = [], False
        first = False
    if run and not (tentative and len(run) == 1):
        _close(run, known, phrases, seen)
    return phrases


def _close(run: list[str], known: set[str], phrases: list[str], seen: set[str]) -> None:
    while run and run[-1].lower() in _JOINERS:
        run.pop()
    if not run:
        return
    phrase = " ".join(run)
    lower = phrase.lower()
    if lower in seen:
        return
    if any(w not in known and w not in _GENERIC for w in _CONTENT.findall(lower)):
        seen.add(lower)
        phrases.append(phrase)


def fuse(alt: str, vec: str) -> str:
    """VeC plus the AltText's named things it lacks; the VeC itself when there are none."""
    cleaned = clean_alt(alt)
    if not cleaned:
        return vec
    known = set(_CONTENT.findall(vec.lower()))
    added, n_words = [], 0
    for phrase in salient(cleaned, known):
        size = phrase.count(" ") + 1
        if n_words + size > MAX_ADDED_WORDS:
            continue
        added.append(phrase)
        n_words += size
        if len(added) == MAX_PHRASES:
            break
    if not added:
        return vec
    base = vec.rstrip(" .")
    end = "." if vec.rstrip().endswith(".") else ""
    return f"{base}, {', '.join(added)}{end}"


class RulesFusion:
    """`fuse` as a batch backend, so the rewrite stage treats it like a model."""

    batch_size = 512

    def generate(self, pairs: list[tuple[str, str]]) -> list[str]:
        return [fuse(alt, vec) for alt, vec in pairs]
