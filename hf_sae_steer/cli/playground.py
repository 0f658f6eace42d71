"""The playground behind ``hf-sae-steer chat`` and ``hf-sae-steer app``: one loaded setup (model,
SAE, scores, optionally a second model to compare with) and the steering settings.

Every continuation goes through the library's one generation path (:class:`Generator`, that is
``model.generate``, under a :class:`SteeredModel` for the steered one), so the playground shows
what ``hf-sae-steer generate`` prints for the same settings and seed; streaming only adds a
``transformers`` streamer to that same ``generate`` call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from torch import nn

from hf_sae_steer.cli.demo import SWAP_SCORES, find_assets, recommended_line
from hf_sae_steer.cli.samples import TOPIC_TOKENS, Shown, sample_generator, shown_samples
from hf_sae_steer.cli.settings import (
    RECOMMENDED,
    PlaygroundError,
    Settings,
    parse_direction,
    parse_method,
    parse_positions,
    parse_tokens,
)
from hf_sae_steer.data.prompts import load_prompts
from hf_sae_steer.generation import Generator, check_prompt_chars, sampling_options
from hf_sae_steer.models import context_length, load_model
from hf_sae_steer.sae.base import SAE
from hf_sae_steer.sae.loading import load_sae
from hf_sae_steer.scores.record import FeatureScores, load_scores
from hf_sae_steer.scoring.examples import LatentExample, latent_examples
from hf_sae_steer.steering.effect import SteeringEffect, steering_effect
from hf_sae_steer.steering.steered import SteeredModel

BASE, STEERED, COMPARE = "base", "steered", "compare"
SWAP = "swap"
NOT_TEXT = "That line is not UTF-8 text (is the terminal set to UTF-8?); type it again."


@dataclass
class Output:
    """One model's continuation; ``seconds`` (inside ``generate``) is None while streaming."""

    text: str
    seconds: float | None = None


@dataclass
class LatentRow:
    """A top latent of the scores, its weight in ``add`` (if chosen), what fires it most."""

    rank: int
    latent: int
    score: float
    weight: float | None
    examples: list[LatentExample] = field(default_factory=list)
    searched: bool = True  # whether any prompts were searched for its examples

    def fires_on(self) -> str:
        if not self.examples:
            return "(never fires on the latent prompts)" if self.searched else "(none searched)"
        return " · ".join(f"{ex.token!r} {ex.activation:.2f}" for ex in self.examples)


class Playground:
    """A loaded setup and the current :class:`Settings`; thread-safe (one turn at a time, since
    steering hooks live on the shared model)."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        sae: SAE,
        scores: FeatureScores,
        *,
        compare: tuple[nn.Module, Any] | None = None,
        latent_prompts: list[str] | None = None,
        reference_prompts: list[str] | None = None,
        layer: int | None = None,
        site: str | None = None,
        clamp_value: float | None = None,
        settings: Settings | None = None,
        setup: dict[str, Any] | None = None,
        reference_scores: FeatureScores | None = None,
    ) -> None:
        self.model, self.tokenizer, self.sae, self.scores = model, tokenizer, sae, scores
        # What swap steers with beside the loaded scores, as the demo's "swap (reference)":
        # the reference rule's scores (the demo's scores_seed), when given.
        self.reference_scores = reference_scores
        self.compare_model = compare
        self.latent_prompts = latent_prompts
        # What a topic of your own is fitted against (cli/topics.py); the loaded scores and the
        # topic's name (None: steering with the loaded scores) for :topic reset.
        self.reference_prompts = reference_prompts
        self.loaded_scores, self.topic = scores, None
        self.layer, self.site, self.clamp_value = layer, site, clamp_value
        self.setup = setup or {}
        self._lock = threading.Lock()  # a plain Lock: Gradio may resume a stream on any thread
        self._latents: dict[tuple[int, int], list[LatentRow]] = {}
        self._effects: dict[tuple[Settings, int], SteeringEffect] = {}
        self.settings = self.validate(settings or Settings())

    @classmethod
    def load(
        cls,
        *,
        assets: str | Path | None = None,
        model: str | None = None,
        sae: str | None = None,
        scores: str | None = None,
        compare_model: str | None = None,
        latent_prompts: str | Path | None = None,
        reference: str | Path | None = None,
        reference_scores: str | Path | None = None,
        device: str | None = None,
        dtype: str | None = None,
        **options: Any,
    ) -> Playground:
        """Load ``model``/``sae``/``scores``, or all three from the shipped demo when none is
        given (its reference set then searches for the tokens that fire the top latents).
        ``reference``: the texts a topic of your own is fitted against (default: the latent
        prompts; on the demo its reference set). ``reference_scores``: the reference rule's
        scores, which ``swap`` steers with, as the demo's "swap (reference)" does (on the demo:
        its ``scores_seed``)."""
        if model is None or sae is None or scores is None:
            if any(v is not None for v in (model, sae, scores)):
                raise ValueError("Pass all of --model, --sae and --scores, or none (the demo).")
            root = find_assets(assets)
            model, sae, scores = str(root / "model"), str(root / "sae"), str(root / "scores")
            if latent_prompts is None:
                latent_prompts = root / "reference.txt"
            if reference_scores is None and (root / "scores_seed").is_dir():
                reference_scores = root / "scores_seed"
        autoencoder, artifact = load_sae(sae), load_scores(scores)  # cheap checks first
        seed = load_scores(reference_scores) if reference_scores is not None else None
        prompts = load_prompts(latent_prompts) if latent_prompts is not None else None
        against = load_prompts(reference) if reference is not None else prompts
        lm, tokenizer = load_model(model, device=device, dtype=dtype)
        other = load_model(compare_model, device=device, dtype=dtype) if compare_model else None
        setup = {"model": model, "sae": sae, "scores": scores, "compare_model": compare_model}
        return cls(
            lm, tokenizer, autoencoder, artifact, compare=other, latent_prompts=prompts,
            reference_prompts=against, setup=setup, reference_scores=seed, **options,
        )  # fmt: skip

    def setup_line(self) -> str:
        """What is loaded, in one line (paths under the working directory shown relative)."""
        parts = [f"{key} {_short(self.setup[key])}" for key in ("model", "sae", "scores")
                 if self.setup.get(key)]  # fmt: skip
        if self.topic is not None:
            parts.append(f"steering with your topic ({self.topic})")
        if self.setup.get("compare_model"):
            parts.append(f"compared with {_short(self.setup['compare_model'])}")
        return ", ".join(parts)

    # -- settings ------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """The outputs of a turn, in order."""
        return [BASE, STEERED] + ([COMPARE] if self.compare_model is not None else [])

    def update(self, **changes: Any) -> str:
        """Change the settings (a new method resets the strength to its default unless one is
        given); returns the steering they now mean. Bad values raise and change nothing."""
        unknown = set(changes) - {f.name for f in fields(Settings)}
        if unknown:
            raise PlaygroundError(f"Unknown settings {sorted(unknown)}.")
        if changes.get("method", self.settings.method) != self.settings.method:
            changes.setdefault("strength", None)
        self.settings = self.validate(replace(self.settings, **changes))
        return self.describe()

    def validate(self, settings: Settings) -> Settings:
        """``settings`` if the steering can be built with them (built once, then removed)."""
        parse_method(settings.method)
        parse_positions(settings.positions)
        parse_direction(settings.direction)
        parse_tokens(settings.max_new_tokens)
        with self._lock, self._steered(settings):
            pass
        return settings

    def describe(self, settings: Settings | None = None) -> str:
        """The steering ``settings`` mean, with the defaults filled in."""
        settings = settings or self.settings
        with self._lock, self._steered(settings) as steered:
            step = steered.interventions[0]
            method, strength, keep = step.method, step.strength, step.preserve_error
        origin = " (the scores' recommendation)" if settings.method == RECOMMENDED else ""
        if settings.method == RECOMMENDED and settings.direction == "away":
            origin = " (the scores' recommended suppression)"
        if settings.method == SWAP:
            origin = f" on {self.swap_scores_label()}"
        return (
            f"{method}{origin} at strength {strength:.3g}, preserve_error "
            f"{'on' if keep else 'off'}, positions {settings.positions}"
            + (", away from the topic" if settings.direction == "away" else "")
        )

    def use_scores(self, scores: FeatureScores, topic: str | None = None) -> str:
        """Steer with ``scores`` from the next turn on (``topic``: what they were fitted on;
        None: the loaded scores), as they recommend: the method, strength and preserve_error
        picked earlier give way to the new scores' recommendation (positions, tokens and
        sampling stay). That steering is built once with them first: if it cannot steer, this
        raises and nothing changes. Returns the steering they now mean."""
        settings = replace(self.settings, method=RECOMMENDED, strength=None, preserve_error=None)
        with self._lock:
            with self._steered(settings, scores):
                pass
            self.scores, self.topic, self._latents, self._effects = scores, topic, {}, {}
            self.settings = settings
        return self.describe()

    def swap_scores(self) -> FeatureScores:
        """The scores ``swap`` steers with: the reference rule's, when they were loaded and no
        topic of your own steers; else the scores that steer (``swap`` then means the same
        method on other scores, and :meth:`describe` says which)."""
        if self.reference_scores is not None and self.topic is None:
            return self.reference_scores
        return self.scores

    def swap_scores_label(self) -> str:
        """Which scores ``swap`` steers with, in words (the chat and the app show it)."""
        chosen = self.swap_scores()
        if chosen.rule == "seed":
            return SWAP_SCORES
        whose = "the loaded scores" if self.topic is None else "your topic's scores"
        return f"{whose} (rule {chosen.rule or 'unknown'})"

    @property
    def model_lock(self) -> threading.Lock:
        """Held while the model runs (a turn, a fit): one at a time, since hooks are shared."""
        return self._lock

    def _steered(self, settings: Settings, scores: FeatureScores | None = None) -> SteeredModel:
        """The steering of ``settings`` on the model (call with the lock held; remove it)."""
        try:
            return SteeredModel(
                self.model, self.sae, layer=self.layer, site=self.site,
                method=None if settings.method == RECOMMENDED else settings.method,
                scores=scores if scores is not None else (
                    self.swap_scores() if settings.method == SWAP else self.scores),
                strength=settings.strength,
                preserve_error=settings.preserve_error, positions=settings.positions,
                clamp_value=self.clamp_value, direction=settings.direction,
            )  # type: ignore[arg-type]  # fmt: skip
        except (ValueError, TypeError) as error:
            raise PlaygroundError(f"Cannot steer with {settings.method}: {error}") from error

    # -- a turn --------------------------------------------------------------------------
    def check_prompt(self, prompt: str, settings: Settings | None = None) -> str:
        """The prompt, if it is not empty and fits every model's context with the new tokens."""
        settings = settings or self.settings
        if not isinstance(prompt, str):
            raise PlaygroundError(f"The prompt must be text; got {type(prompt).__name__}.")
        if not prompt.strip():
            raise PlaygroundError("The prompt is empty; type some text to continue.")
        if not is_text(prompt):
            raise PlaygroundError("The prompt is not UTF-8 text (it holds undecodable bytes).")
        models = [(self.model, self.tokenizer)]
        models += [self.compare_model] if self.compare_model is not None else []
        for model, tokenizer in models:
            try:  # in characters first: tokenizing a huge prompt costs memory in proportion
                check_prompt_chars(model, tokenizer, [prompt], settings.max_new_tokens)
            except ValueError as error:
                raise PlaygroundError(str(error)) from None
            n = len(tokenizer(prompt, verbose=False)["input_ids"])
            limit = context_length(model, tokenizer)
            if limit is not None and n + settings.max_new_tokens > limit:
                raise PlaygroundError(
                    f"The prompt is {n} tokens; with {settings.max_new_tokens} new tokens that "
                    f"exceeds the model's context of {limit} tokens. Shorten the prompt or ask "
                    "for fewer new tokens."
                )
        return prompt

    def run(self, prompt: str, settings: Settings | None = None) -> dict[str, Output]:
        """Every output of a turn, each with its time."""
        settings = settings or self.settings
        self.check_prompt(prompt, settings)
        with self._lock:
            return {name: self._generate(name, prompt, settings) for name in self.names}

    def stream(self, prompt: str, settings: Settings | None = None) -> Iterator[dict[str, Output]]:
        """The outputs of a turn as tokens arrive (one model after the other): yields a
        snapshot of all of them after every new piece of text; the last has every time."""
        from transformers import TextIteratorStreamer

        settings = settings or self.settings
        self.check_prompt(prompt, settings)
        outputs = {name: Output("") for name in self.names}
        with self._lock:
            for name in self.names:
                tokenizer = self._model_for(name)[1]
                streamer = TextIteratorStreamer(
                    tokenizer, skip_prompt=True, skip_special_tokens=True
                )
                done: dict[str, Any] = {}

                def work(name: str = name, streamer: Any = streamer, done: dict = done) -> None:
                    try:
                        done["output"] = self._generate(name, prompt, settings, streamer)
                    except BaseException as error:  # re-raised in the caller's thread below
                        done["error"] = error
                    finally:
                        streamer.end()  # unblocks the reader even when generate failed

                worker = threading.Thread(target=work, daemon=True)
                worker.start()
                try:
                    for piece in streamer:
                        outputs[name].text += piece
                        yield dict(outputs)
                finally:
                    worker.join()
                if "error" in done:
                    raise done["error"]
                outputs[name] = done["output"]  # the loop's own text (cut at EOS), and its time
                yield dict(outputs)

    def _model_for(self, name: str) -> tuple[nn.Module, Any]:
        if name == COMPARE and self.compare_model is not None:
            return self.compare_model
        return self.model, self.tokenizer

    def _generate(self, name: str, prompt: str, settings: Settings, streamer: Any = None) -> Output:
        """One continuation through the library's generation loop (call with the lock held)."""
        model, tokenizer = self._model_for(name)
        options = sampling_options(
            max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
            temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
        )  # fmt: skip
        if streamer is not None:
            options["streamer"] = streamer
        generator = Generator(
            tokenizer, [prompt], seed=settings.seed, batch_size=1, options=options
        )
        if name == STEERED:
            with self._steered(settings) as steered:
                (continuation,), seconds = generator.run(steered)
        else:
            (continuation,), seconds = generator.run(model)
        return Output(continuation.text, seconds)

    # -- what the steering does ---------------------------------------------------------
    def effect(self, settings: Settings | None = None) -> SteeringEffect:
        """What the steering of ``settings`` does, in words (steering/effect.py); cached."""
        settings = settings or self.settings
        key = (replace(settings, max_new_tokens=0, do_sample=False, seed=0), id(self.scores))
        if key not in self._effects:
            with self._lock, self._steered(settings) as steered:
                self._effects[key] = steering_effect(steered, self.tokenizer)
        return self._effects[key]

    def samples(
        self, prompt: str, settings: Settings | None = None, n: int = 3
    ) -> dict[str, list[Shown]]:
        """``n`` sampled continuations of ``prompt`` by the base model and the steering (the
        same draws, with repetition control), the steering's topic words marked in both."""
        settings = settings or self.settings
        self.check_prompt(prompt, settings)
        topic = self.effect(settings).topic_token_ids(TOPIC_TOKENS)
        generator = sample_generator(self.tokenizer, [prompt], samples=n, seed=settings.seed,
                                     max_new_tokens=settings.max_new_tokens)  # fmt: skip
        with self._lock:
            base = shown_samples(self.model, generator, topic)[0]
            with self._steered(settings) as steered:
                return {BASE: base, STEERED: shown_samples(steered, generator, topic)[0]}

    # -- what the scores say -------------------------------------------------------------
    def report(self) -> str:
        """The recommended steering and the uncertainty report of the scores."""
        return f"{recommended_line(self.scores)}\n{self.scores.report()}"

    def top_latents(self, k: int = 10, per_latent: int = 3) -> list[LatentRow]:
        """Up to ``k`` top-scoring latents (those scored above 0) with the tokens of the latent
        prompts that fire them most (no examples without latent prompts); cached."""
        if (k, per_latent) in self._latents:
            return self._latents[(k, per_latent)]
        top = [int(i) for i in self.scores.top_latents(k) if self.scores.scores[i] > 0]
        chosen = self.scores.latent_weights()
        weights = {} if chosen is None else dict(zip(*(t.tolist() for t in chosen), strict=True))
        examples: dict[int, list[LatentExample]] = {}
        if self.latent_prompts and top:
            with self._lock:
                examples = latent_examples(
                    self.model, self.tokenizer, self.sae, self.latent_prompts, top,
                    layer=self.layer, site=self.site, scores=self.scores, per_latent=per_latent,
                )  # fmt: skip
        rows = [
            LatentRow(
                rank,
                i,
                float(self.scores.scores[i]),
                weights.get(i),
                examples.get(i, []),
                searched=bool(self.latent_prompts),
            )
            for rank, i in enumerate(top, 1)
        ]
        self._latents[(k, per_latent)] = rows
        return rows


def is_text(line: str) -> bool:
    """Whether ``line`` is text: no lone surrogates (bytes that were not UTF-8, decoded with
    ``surrogateescape``, or escaped into JSON), which tokenizers and terminals refuse."""
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _short(spec: str) -> str:
    path = Path(spec)
    try:
        return str(path.resolve().relative_to(Path.cwd())) if path.exists() else spec
    except ValueError:  # not under the working directory
        return spec
