"""A topic of one's own for the playground's tests (food, in the demo corpus's gloss style), and
what the library gives for it on the shipped demo: FeatureScores.fit with every default against
the demo's reference set, and the steered continuation with those scores."""

from __future__ import annotations

from pathlib import Path

from hf_sae_steer import FeatureScores, SteeredModel, load_prompts
from hf_sae_steer.generation import continue_prompts
from hf_sae_steer.models import load_model
from hf_sae_steer.sae.loading import load_sae
from hf_sae_steer.scores.record import load_scores

DEMO = Path(__file__).resolve().parents[1] / "storage" / "demo"
FOOD = [
    "Bread is a food made from flour, water and yeast, baked in an oven.",
    "Cheese is a solid food prepared from the pressed curds of milk.",
    "Soup is a liquid food made by boiling meat, fish or vegetables with seasonings.",
    "Pastry is a dough of flour, water and shortening, baked into pies and tarts.",
    "Rice is the grain of a grass, cooked and eaten as a staple food.",
    "Stew is meat and vegetables cooked slowly in liquid in a closed pot.",
]


def fit_on_demo(texts: list[str]) -> FeatureScores:
    """The library's own fit of ``texts`` on the demo (what the playground must give)."""
    model, tokenizer = load_model(str(DEMO / "model"))
    loaded = load_scores(DEMO / "scores")
    return FeatureScores.fit(
        model, tokenizer, load_sae(DEMO / "sae"), layer=loaded.layer, site=loaded.site,
        reference=load_prompts(DEMO / "reference.txt"), alignment=texts, progress=False,
    )  # fmt: skip


def steered_on_demo(scores: FeatureScores, prompt: str, tokens: int) -> str:
    """The demo model's greedy continuation of ``prompt`` steered as ``scores`` recommend."""
    model, tokenizer = load_model(str(DEMO / "model"))
    with SteeredModel(model, load_sae(DEMO / "sae"), scores=scores) as steered:
        return continue_prompts(steered, tokenizer, [prompt], max_new_tokens=tokens)[0]
