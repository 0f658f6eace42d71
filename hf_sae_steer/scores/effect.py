"""What a steering does in words, as a score artifact records it: the tokens it raises and lowers
most by one measure (:class:`TokenEffect`), and by every measure of one steering
(:class:`SteeringEffect`). Plain data that reads and writes JSON and prints itself; the
measuring lives in :mod:`hf_sae_steer.steering.effect` (``docs/method.md`` §4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TokenEffect:
    """The tokens one measure raises and lowers most: ``(token text, value)``, largest first;
    ``words``: the same measure's top among whole-word tokens (a token that starts a word and
    holds three letters or more: ``" artery"``, not ``"osis"``), which read as the topic.

    ``*_ids`` are the same tokens' ids (to find them in generated text)."""

    label: str
    raised: list[tuple[str, float]]
    lowered: list[tuple[str, float]]
    raised_ids: list[int] = field(default_factory=list)
    lowered_ids: list[int] = field(default_factory=list)
    words: list[tuple[str, float]] = field(default_factory=list)
    word_ids: list[int] = field(default_factory=list)

    def format(self, n: int = 8) -> str:
        """The label, the ``n`` tokens raised most, those lowered most, and the words raised
        most (when any)."""
        lines = [
            f"{self.label}:",
            f"  raises  {_listed(self.raised[:n])}",
            f"  lowers  {_listed(self.lowered[:n])}",
        ]
        if self.words:
            lines.append(f"  words   {_listed(self.words[:n])}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "raised": [[t, v] for t, v in self.raised],
            "lowered": [[t, v] for t, v in self.lowered],
            "raised_ids": list(self.raised_ids),
            "lowered_ids": list(self.lowered_ids),
            "words": [[t, v] for t, v in self.words],
            "word_ids": list(self.word_ids),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenEffect:
        def pairs(key: str) -> list[tuple[str, float]]:
            return [(str(t), float(v)) for t, v in data.get(key, [])]

        def ids(key: str) -> list[int]:
            return [int(i) for i in data.get(key, [])]

        return cls(
            str(data["label"]), pairs("raised"), pairs("lowered"), ids("raised_ids"),
            ids("lowered_ids"), pairs("words"), ids("word_ids"),
        )  # fmt: skip


@dataclass(frozen=True)
class SteeringEffect:
    """What a steering does in words: the next-token effect (``None`` when not measured) and
    the logit lens of its added vector, then of its chosen latents (per steered site)."""

    next_token: TokenEffect | None
    lens: list[TokenEffect] = field(default_factory=list)

    def format(self, n: int = 8, latents: int = 3) -> str:
        """The next-token effect, the lens of each site's added vector and of its first
        ``latents`` chosen latents, ``n`` tokens each way."""
        if self.next_token is None and not self.lens:
            return "no change: the steering leaves the model as it is"
        parts = [] if self.next_token is None else [self.next_token.format(n)]
        shown, per_site = [], 0
        for effect in self.lens:
            is_row = effect.label.startswith("logit lens of latent")
            per_site = per_site + 1 if is_row else 0
            if not is_row or per_site <= latents:
                shown.append(effect.format(n))
        return "\n".join(parts + shown)

    def __str__(self) -> str:
        return self.format()

    @property
    def main(self) -> TokenEffect | None:
        """The measure the topic's words come from: the next-token effect, else (not
        measured) the first logit lens, the added vector's."""
        return self.next_token or (self.lens[0] if self.lens else None)

    def topic_token_ids(self, n: int = 20) -> set[int]:
        """The ids of the ``n`` whole-word tokens the steering raises most (:attr:`main`)."""
        return set() if self.main is None else set(self.main.word_ids[:n])

    def words(self, n: int = 20) -> list[str]:
        """The ``n`` whole-word tokens the steering raises most, stripped, without repeats."""
        found = [] if self.main is None else [t.strip() for t, _ in self.main.words[:n]]
        return list(dict.fromkeys(found))

    def summary(self, n: int = 10) -> dict[str, Any]:
        """A short JSON listing (a server's concept list, an API answer): the ``n`` words the
        steering raises most, and the ``n`` tokens it raises and lowers most, by :attr:`main`."""
        main = self.main
        if main is None:
            return {"measure": None, "words": [], "raises": [], "lowers": []}
        return {
            "measure": main.label,
            "words": self.words(n),
            "raises": [t for t, _ in main.raised[:n]],
            "lowers": [t for t, _ in main.lowered[:n]],
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "next_token": None if self.next_token is None else self.next_token.to_dict(),
            "lens": [effect.to_dict() for effect in self.lens],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SteeringEffect:
        nxt = data.get("next_token")
        return cls(
            None if nxt is None else TokenEffect.from_dict(nxt),
            [TokenEffect.from_dict(e) for e in data.get("lens", [])],
        )


def _listed(pairs: list[tuple[str, float]]) -> str:
    return ", ".join(f"{_shown(text)} {value:+.2f}" for text, value in pairs) or "(none)"


def _shown(text: str) -> str:
    """A token as printed: stripped of the space that starts a word, quoted when that leaves
    nothing readable or the token holds other whitespace."""
    stripped = text.strip()
    readable = stripped.isprintable() and not any(c.isspace() for c in stripped)
    return stripped if stripped and readable else repr(text)


