"""DataComp's basic filter, as its baselines apply it (baselines/apply_filter.py,
`load_uids_with_basic_filter_helper`): an image is kept when its smaller side is at
least 200 px and its aspect ratio (longer side / shorter side) is at most 3.0; a
caption when it has more than 2 words and more than 5 characters. DataComp also
keeps English captions only (fastText); `vecap curate --rule metaclip2` is where
languages are handled here.

The sizes are the image's own (its header's), not those of a JPEG decoded at a
reduced scale to fit --max-pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

from vecap_cli.steps.curate.filters import basic_text_filter

# Counter names: what each rule drops a record as.
TOO_SMALL = "image-too-small"
ASPECT = "aspect-ratio"
TEXT = "text-filter"  # the name vecap curate --text-filter counts under

DATACOMP_MIN_SIDE = 200
DATACOMP_MAX_ASPECT = 3.0


@dataclass(frozen=True)
class BasicRules:
    min_side: int = 0  # 0: any size
    max_aspect: float | None = None  # None: any shape
    text_filter: bool = False

    def image(self, width: int, height: int) -> tuple[str, str] | None:
        """(rule, detail) when the image is dropped, else None."""
        short, long = min(width, height), max(width, height)
        if short < self.min_side:
            return TOO_SMALL, f"{width}x{height}: smaller side under --min-side {self.min_side}"
        if self.max_aspect is not None and long > self.max_aspect * short:
            return ASPECT, f"{width}x{height}: aspect ratio over --max-aspect {self.max_aspect:g}"
        return None

    def text(self, text: str) -> tuple[str, str] | None:
        if self.text_filter and not basic_text_filter(text):
            return TEXT, "2 words or fewer, or 5 characters or fewer"
        return None
