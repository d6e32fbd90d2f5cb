"""The caption template of BOB: where the class and each class-agnostic attribute go in a caption.

``"a photo of a {class}, {background}, {pose}"`` declares two attributes; a caption is the template with the
class name and the attribute texts substituted in one pass (an attribute text that holds braces or another
attribute's name stays literal), so an attribute appears exactly where the template declares it. Attributes the
template does not declare are never written into a caption.
"""

from __future__ import annotations

import string
from collections.abc import Mapping

from ftplugins.errors import FtpluginsError

CLASS = "class"


class CaptionTemplate:
    def __init__(self, text: str):
        self.text = text
        self.parts: list[tuple[str, str | None]] = []  # (literal text, field name or None)
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise FtpluginsError(f"bob_template {text!r}: {exc}; write fields as {{class}} / {{background}} and "
                                 "double literal braces ({{{{ }}}}).") from None
        names = []
        for literal, name, spec, conversion in parsed:
            if name is not None and (not name.isidentifier() or spec or conversion):
                raise FtpluginsError(f"bob_template {text!r}: field {{{name}{'!' + conversion if conversion else ''}"
                                     f"{':' + spec if spec else ''}}} is not a plain name; use {{class}} and "
                                     "{attribute_name} fields only.")
            self.parts.append((literal, name))
            if name is not None:
                names.append(name)
        if names.count(CLASS) != 1:
            raise FtpluginsError(f"bob_template {text!r}: needs the field {{class}} exactly once (found "
                                 f"{names.count(CLASS)}); e.g. 'a photo of a {{class}}, {{background}}'.")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise FtpluginsError(f"bob_template {text!r}: attribute field(s) {repeated} appear more than once; "
                                 "declare each attribute once.")
        self.attributes = [n for n in names if n != CLASS]
        if not self.attributes:
            raise FtpluginsError(f"bob_template {text!r} declares no attribute; add one, e.g. "
                                 "'a photo of a {class}, {background}' (without attributes BOB is plain fine-tuning).")

    def render(self, class_name: str, attributes: Mapping[str, str]) -> str:
        """The caption of ``class_name`` with ``attributes`` (every declared one must be there; others are ignored)."""
        missing = [a for a in self.attributes if not isinstance(attributes.get(a), str) or not attributes[a].strip()]
        if missing:
            raise FtpluginsError(f"bob_template {self.text!r} needs attribute(s) {missing}, got "
                                 f"{dict(attributes)}; give every image a non-empty text for each.")
        values = {CLASS: class_name, **{a: attributes[a].strip() for a in self.attributes}}
        return "".join(literal + (values[name] if name is not None else "") for literal, name in self.parts)
