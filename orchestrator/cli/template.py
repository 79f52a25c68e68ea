"""Texts alike but for a few values → one template with named placeholders and the values of
each text. The readable dry run shows sixteen hosts' launch steps this way, once.

Pure, and exact: the texts are cut into the same tokens (words, numbers, spaces, single
characters), and only the token positions where they differ become holes, so `Template.fill`
gives every text back byte for byte. A hole takes the name of a per-text value it spells (a
host's name, a rank...), widened to cover that value when the difference is only part of it
(`h02` when the texts differ in `02`); a hole no value spells is `v1`, `v2`...
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_TOKEN = re.compile(r"[A-Za-z_]+|[0-9]+|\s+|.", re.S)


def tokens(text: str) -> list[str]:
    """`rank8.log` → `rank`, `8`, `.`, `log`: a number stands alone, so a rank is one token."""
    return _TOKEN.findall(text)


def placeholder(name: str) -> str:
    """How a hole reads in a template: `{{host}}` (no shell or JSON text looks like it)."""
    return "{{" + name + "}}"


@dataclass(frozen=True)
class Template:
    parts: tuple[str, ...]  # the literal text around the holes: one more than the holes
    holes: tuple[str, ...]  # each hole's name; a name may recur (then its value does too)
    values: tuple[Mapping[str, str], ...]  # for each text: hole name -> its value there

    @property
    def text(self) -> str:
        return "".join(part + (placeholder(name) if i < len(self.holes) else "")
                       for i, (part, name) in enumerate(zip(self.parts, (*self.holes, ""))))

    @property
    def names(self) -> tuple[str, ...]:
        """The hole names, each once, in the order they first appear."""
        return tuple(dict.fromkeys(self.holes))

    def fill(self, index: int) -> str:
        """Text `index` back, exactly."""
        values = self.values[index]
        return "".join(part + (values[name] if i < len(self.holes) else "")
                       for i, (part, name) in enumerate(zip(self.parts, (*self.holes, ""))))


def make_template(texts: Sequence[str], named: Sequence[Sequence[tuple[str, str]]],
                  contexts: Mapping[str, tuple[str, ...]] | None = None) -> Template | None:
    """One template for `texts`, or None when they are not alike (not the same number of tokens).

    `named[i]` lists text i's values by name, the preferred name first where two spell the same
    hole; a name in `contexts` wins a tie only right after one of its contexts (so that
    `GROUP_RANK=1` reads `{{group_rank}}`, not `{{R0}}`, on hosts of one rank each)."""
    cut = [tokens(t) for t in texts]
    if len({len(c) for c in cut}) != 1:
        return None
    spans = _named_spans(cut, named, contexts or {})
    return _template(cut, spans)


def _named_spans(cut: list[list[str]], named: Sequence[Sequence[tuple[str, str]]],
                 contexts: Mapping[str, tuple[str, ...]]) -> list[tuple[int, int, str | None]]:
    """The holes as token spans [start, end) with a name, or None where no value spells them;
    overlapping spans merged (unnamed)."""
    spans = [_name_hole(cut, start, end, named, contexts) for start, end in _differences(cut)]
    merged: list[tuple[int, int, str | None]] = []
    for start, end, name in sorted(spans, key=lambda span: span[:2]):
        if merged and start < merged[-1][1]:
            last = merged[-1]
            inside = end <= last[1]
            merged[-1] = (last[0], max(last[1], end), last[2] if inside else None)
        else:
            merged.append((start, end, name))
    return merged


def _differences(cut: list[list[str]]) -> list[tuple[int, int]]:
    """Runs of token positions where the texts are not all equal."""
    runs: list[tuple[int, int]] = []
    for i, column in enumerate(zip(*cut)):
        if len(set(column)) > 1:
            if runs and runs[-1][1] == i:
                runs[-1] = (runs[-1][0], i + 1)
            else:
                runs.append((i, i + 1))
    return runs


def _name_hole(cut: list[list[str]], start: int, end: int, named: Sequence[Sequence[tuple[str, str]]],
               contexts: Mapping[str, tuple[str, ...]]) -> tuple[int, int, str | None]:
    found = []
    for name in (n for n, _ in named[0]):
        span = _spelled(cut, start, end, [dict(values).get(name, "") for values in named])
        if span:
            found.append((*span, name))
    if not found:
        return start, end, None
    before = "".join(cut[0][:start])
    for span_start, span_end, name in found:
        if any(before.endswith(c) for c in contexts.get(name, ())):
            return span_start, span_end, name
    plain = [f for f in found if f[2] not in contexts]
    return (plain or found)[0]


def _spelled(cut: list[list[str]], start: int, end: int, values: list[str]) -> tuple[int, int] | None:
    """The span [a, b) around [start, end) whose text is `values[i]` in every text i, if any."""
    lengths = {len(tokens(v)) for v in values}
    if len(lengths) != 1 or "" in values:
        return None
    length = lengths.pop()
    for a in range(start, max(-1, end - length - 1), -1):
        b = a + length
        if b >= end and b <= len(cut[0]) and all("".join(c[a:b]) == v for c, v in zip(cut, values)):
            return a, b
    return None


def _template(cut: list[list[str]], spans: list[tuple[int, int, str | None]]) -> Template:
    """Literal parts from the first text; unnamed holes named v1, v2... (one name per set of values)."""
    parts, holes, position = [], [], 0
    values: list[dict[str, str]] = [{} for _ in cut]
    unnamed: dict[tuple[str, ...], str] = {}
    for start, end, name in spans:
        found = tuple("".join(c[start:end]) for c in cut)
        if name is None:
            name = unnamed.setdefault(found, f"v{len(unnamed) + 1}")
        parts.append("".join(cut[0][position:start]))
        holes.append(name)
        for mine, value in zip(values, found):
            mine[name] = value
        position = end
    parts.append("".join(cut[0][position:]))
    return Template(tuple(parts), tuple(holes), tuple(values))
