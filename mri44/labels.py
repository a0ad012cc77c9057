"""Class-name parsing: one folder name -> (tumour type, contrast).

The data set names its classes "<Tumour> <Contrast>", with odd spellings kept as they are ("Astrocitoma") and the
normal class spelt "_NORMAL". Everything that groups predictions by tumour type or contrast goes through
`parse_label`, so the metric tables of training and scoring group identically.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CONTRAST_RE = re.compile(r"^(?P<tumor>.*?)[\s_-]+(?P<contrast>T1C\+|T1|T2|FLAIR)$", re.IGNORECASE)
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Label:
    name: str
    tumor_type: str
    contrast: str  # T1, T1C+, T2 or FLAIR (the contrasts _CONTRAST_RE knows), or UNKNOWN


def _tidy_tumor(raw: str) -> str:
    tumor = raw.strip().lstrip("_").strip()
    # "_NORMAL" is shouted in the folder names; every other type is in title case already.
    return tumor.title() if tumor.isupper() else tumor


def parse_label(name: str) -> Label:
    """Split a class name into tumour type and contrast; a name without a known contrast keeps it unknown."""
    match = _CONTRAST_RE.match(name.strip())
    if match is None:
        return Label(name=name, tumor_type=_tidy_tumor(name) or name, contrast=UNKNOWN)
    contrast = match["contrast"].upper()
    return Label(name=name, tumor_type=_tidy_tumor(match["tumor"]) or name, contrast=contrast)
