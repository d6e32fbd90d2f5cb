"""Generation prompts with the attributes marginalised out: drawn from the real images' pool without looking at
the class.

One attribute draw per *slot* k = 0..per_class-1 is shared by every class (image k of each class gets the same
attributes), so in the synthetic set every class sees exactly the same attribute counts: the class × attribute
table is a product, whatever correlation the few real images had (every red square photographed on grass).
Modes: ``pool`` draws all attributes of one real image of any class (uniformly over images, so keeping which
attributes occur together); ``independent`` draws each attribute on its own from its frequency over the real
images (new combinations). Prompts are the caption template rendered with the class name and the drawn
attributes; the real images' captions are never read here.
"""

from __future__ import annotations

import random
from typing import Any

from ftplugins.errors import FtpluginsError

from .options import MARGINALIZE
from .template import CaptionTemplate


def draw_attributes(pool_rows: list[dict[str, Any]], attributes: list[str], mode: str, count: int,
                    rng: random.Random) -> list[dict[str, str]]:
    """``count`` attribute sets drawn from ``pool_rows`` (their classes are not read)."""
    if mode not in MARGINALIZE:
        raise FtpluginsError(f"marginalize {mode!r}: expected one of {', '.join(MARGINALIZE)}.")
    texts = [r["attributes"] for r in pool_rows]
    if mode == "pool":
        return [dict(texts[rng.randrange(len(texts))]) for _ in range(count)]
    return [{a: texts[rng.randrange(len(texts))][a] for a in attributes} for _ in range(count)]


def plan_prompts(pool: Any, per_class: int, classes: list[str] | None = None, mode: str = "pool",
                 seed: int = 0) -> list[dict[str, Any]]:
    """``[{"label", "prompt", "attributes", "slot"}]``: ``per_class`` prompts for each class, class-major."""
    if per_class < 1:
        raise FtpluginsError(f"per_class={per_class}: expected at least one image per class.")
    classes = list(pool.classes if classes is None else classes)
    unknown = [c for c in classes if c not in pool.classes]
    if unknown or not classes:
        raise FtpluginsError(f"classes {unknown or classes}: not classes of the fine-tuning run (it saw "
                             f"{pool.classes}); generate only classes the model was fine-tuned on.")
    template = CaptionTemplate(pool.template)
    draws = draw_attributes(pool.rows, template.attributes, mode, per_class, random.Random(seed))
    return [{"label": c, "prompt": template.render(c, attrs), "attributes": attrs, "slot": k}
            for c in classes for k, attrs in enumerate(draws)]
