"""A topic of your own in the playground (chat and web app alike; no UI here).

A few example texts, pasted (one per line) or loaded from a file or dataset, are checked, then
fitted against the playground's reference set with ``FeatureScores.fit`` and its default rule,
in a background thread that reports its progress and can be cancelled. A finished fit becomes
the playground's steering (:meth:`Playground.use_scores`: the next turn builds the steered model
from the new scores; the base model is never changed); ``reset`` returns to the loaded scores,
``save`` writes the fitted artifact to a folder (never over files it did not write) or a zip.

The fit holds the playground's model lock, as a turn does: a turn typed during a fit waits for
it. A cancelled or failed fit leaves the model and the steering as they were.
"""

from __future__ import annotations

import shutil
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_sae_steer.cli.settings import PlaygroundError
from hf_sae_steer.data.prompts import load_prompts
from hf_sae_steer.folders import check_output_folder
from hf_sae_steer.scores.record import ARTIFACT_FILES, FeatureScores, is_artifact
from hf_sae_steer.scores.uncertainty import MIN_ALIGNMENT_TEXTS
from hf_sae_steer.scoring.fit import fit_scores

if TYPE_CHECKING:
    from hf_sae_steer.cli.playground import Playground

MIN_EXAMPLES = MIN_ALIGNMENT_TEXTS  # fewer texts give a mean difference that is mostly noise
# A topic is a few dozen typical texts; these bound what one request may make a shared app do.
MAX_EXAMPLES = 1_000
MAX_EXAMPLE_CHARS = 5_000  # a paragraph or two (the fit reads a text's first 256 tokens)
MAX_FILE_MB = 32
ARTIFACT_NAME = "topic-scores"  # the folder inside a downloaded zip
# Where each phase of a fit sits on the progress indicator: (fraction at its start, at its end).
SPANS = {
    "alignment": (0.0, 0.1), "reference": (0.1, 0.6), "rule": (0.6, 0.7), "calibrate": (0.7, 1.0),
}
RUNNING, DONE, CANCELLED, FAILED = "running", "done", "cancelled", "failed"
WAITING = "waiting for the model to be free (a turn may be running)"


class FitCancelled(Exception):
    """Raised inside a fit's progress callback to stop it."""


# -- the example texts ---------------------------------------------------------------------
def parse_examples(text: str | Sequence[str] | None) -> list[str]:
    """Example texts from pasted text (one per line) or a list; blank ones dropped. Far more
    text than a topic may hold is refused before it is split."""
    if text is None:
        return []
    if isinstance(text, str) and len(text) > MAX_EXAMPLES * (MAX_EXAMPLE_CHARS + 1):
        raise PlaygroundError(
            f"The example texts are {len(text):,} characters long, more than a topic may hold "
            f"(at most {MAX_EXAMPLES:,} texts of at most {MAX_EXAMPLE_CHARS:,} characters "
            "each): give fewer, shorter texts."
        )
    lines = text.splitlines() if isinstance(text, str) else list(text)
    if not all(isinstance(line, str) for line in lines):
        raise PlaygroundError("Example texts must be strings, one text per line.")
    return [line.strip() for line in lines if line.strip()]


def load_examples(source: str | Path, shown: str | None = None) -> list[str]:
    """Example texts from a file (.txt one per line, .csv/.json/.jsonl/.parquet with a text
    column) or a dataset, as :func:`load_prompts` reads them; ``shown``: the name in messages.
    A file larger than :data:`MAX_FILE_MB` is refused before it is read."""
    name = shown or str(source)
    path = Path(source).expanduser()
    try:
        size = path.stat().st_size if path.is_file() else 0
        if size > MAX_FILE_MB << 20:
            raise PlaygroundError(
                f"{name} is {size >> 20} MB; a topic file may be at most {MAX_FILE_MB} MB (at "
                f"most {MAX_EXAMPLES:,} texts of at most {MAX_EXAMPLE_CHARS:,} characters each)."
            )
        texts = load_prompts(source)
    except PlaygroundError:
        raise
    except (ValueError, OSError, ImportError, RuntimeError) as error:
        message = str(error).strip().splitlines()[0].replace(str(source), name)
        raise PlaygroundError(f"Cannot read example texts from {name}: {message}") from None
    try:
        return check_examples(parse_examples(texts), limits_only=True)
    except PlaygroundError as error:
        raise PlaygroundError(f"{name}: {str(error)[0].lower()}{str(error)[1:]}") from None


def check_examples(texts: Sequence[str], limits_only: bool = False) -> list[str]:
    """``texts`` without blanks and repeats, if at least :data:`MIN_EXAMPLES` remain and none
    is over the size limits (:data:`MAX_EXAMPLES`, :data:`MAX_EXAMPLE_CHARS`);
    ``limits_only``: ``texts`` as they are, once within the limits."""
    given = [t.strip() for t in texts if t.strip()]
    if len(given) > MAX_EXAMPLES:
        raise PlaygroundError(
            f"{len(given):,} example texts is more than the {MAX_EXAMPLES:,} a topic may have: "
            "give fewer (a few dozen typical texts are enough)."
        )
    for number, text in enumerate(given, start=1):
        if len(text) > MAX_EXAMPLE_CHARS:
            raise PlaygroundError(
                f"Text {number} is {len(text):,} characters long; a topic's example texts may be "
                f"at most {MAX_EXAMPLE_CHARS:,} characters each: cut it, or split it into texts."
            )
    if limits_only:
        return list(texts)
    distinct = list(dict.fromkeys(given))
    if len(distinct) < MIN_EXAMPLES:
        got = f"got {len(distinct)}" + (" distinct" if len(distinct) < len(texts) else "")
        raise PlaygroundError(
            f"A topic needs at least {MIN_EXAMPLES} example texts, one per line; {got}. "
            "Paste or load more texts about your topic."
        )
    return distinct


# -- one fit in the background -------------------------------------------------------------
@dataclass(frozen=True)
class FitStatus:
    """Where a fit stands: ``state`` running/done/cancelled/failed, ``fraction`` done (0-1),
    ``phase`` in words, the error's message, the report's warnings, seconds so far."""

    state: str
    fraction: float
    phase: str
    error: str | None = None
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def finished(self) -> bool:
        return self.state != RUNNING

    def line(self) -> str:
        """The status in one line, for a terminal or a page."""
        if self.state == RUNNING:
            return f"fitting {self.fraction:4.0%}  {self.phase}"
        if self.state == FAILED:
            return f"the fit failed: {self.error}"
        return f"{self.phase} in {self.seconds:.1f} s" if self.state == DONE else self.phase


@dataclass
class TopicFit:
    """Fits scores for ``examples`` against the playground's reference prompts in a thread;
    when it finishes (not cancelled), the playground steers with them. Start with
    :meth:`Topics.start`."""

    playground: Playground
    examples: list[str]
    name: str
    result: FeatureScores | None = None
    exception: BaseException | None = None  # what made it fail, for a traceback when debugging
    _status: FitStatus = field(default_factory=lambda: FitStatus(RUNNING, 0.0, WAITING))
    _cancel: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _started: float = field(default_factory=time.perf_counter)

    def start(self) -> TopicFit:
        self._thread = threading.Thread(target=self._work, name="topic-fit", daemon=True)
        self._thread.start()
        return self

    @property
    def status(self) -> FitStatus:
        return self._status

    def cancel(self) -> None:
        """Stop the fit at its next progress report (the steering stays as it was)."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: until it ends); True once it has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self._status.finished

    def _set(self, state: str, fraction: float, phase: str, **more: Any) -> None:
        seconds = time.perf_counter() - self._started
        self._status = FitStatus(state, fraction, phase, seconds=seconds, **more)

    def _progress(self, phase: str, done: int, total: int | None) -> None:
        """The fit's callback: what is done, and in words what it does next."""
        if self._cancel.is_set():
            raise FitCancelled
        start, end = SPANS.get(phase, (0.0, 1.0))
        part = min(done / total, 1.0) if total else 0.0
        if phase == "alignment" and done < (total or 0):
            words = f"reading your {total} example texts"
        elif phase == "alignment" or (phase == "reference" and part < 1.0):
            done = done if phase == "reference" else 0
            size = len(self.playground.reference_prompts or [])
            words = f"reading the reference prompts ({done}/{size})"
        elif phase == "calibrate":
            words = "calibrating the strength on neutral prompts"
        else:
            words = "selecting the latents"
        self._set(RUNNING, start + (end - start) * part, words)

    def _work(self) -> None:
        pg = self.playground
        try:
            with pg.model_lock:
                self._progress("alignment", 0, len(self.examples))
                with warnings.catch_warnings():  # the report's warnings come with the status
                    warnings.simplefilter("ignore")
                    scores = fit_scores(  # the library's default rule
                        pg.model, pg.tokenizer, pg.sae,
                        layer=pg.layer if pg.layer is not None else pg.loaded_scores.layer,
                        site=pg.site or pg.loaded_scores.site,
                        reference=pg.reference_prompts, alignment=self.examples,
                        progress=self._progress,
                    )  # fmt: skip
            if self._cancel.is_set():
                raise FitCancelled
            pg.use_scores(scores, topic=self.name)
            self.result = scores
            notes = tuple(scores.quality.warnings) if scores.quality is not None else ()
            self._set(DONE, 1.0, f"fitted your topic ({self.name})", warnings=notes)
        except FitCancelled:
            self._set(CANCELLED, self._status.fraction, "cancelled; the steering is unchanged")
        except (ValueError, OSError, ImportError) as error:  # bad input: its own message
            self.exception = error
            self._set(FAILED, self._status.fraction, "failed", error=_one_line(error))
        except Exception as error:  # noqa: BLE001 - reported in the status, never lost
            self.exception = error
            message = f"internal error ({type(error).__name__}): {_one_line(error)}"
            self._set(FAILED, self._status.fraction, "failed", error=message)


# -- the playground's topic ----------------------------------------------------------------
class Topics:
    """A playground's topic of your own: fit one (one at a time), reset, save."""

    def __init__(self, playground: Playground) -> None:
        self.playground = playground
        self.current: TopicFit | None = None
        self._starting = threading.Lock()  # two requests (page, API) never start two fits

    def check_ready(self) -> None:
        """Raise the reason a fit cannot start now (one runs; no reference set), if any."""
        if self.current is not None and not self.current.status.finished:
            raise PlaygroundError("A topic is being fitted; wait for it or cancel it first.")
        if not self.playground.reference_prompts:
            raise PlaygroundError(
                "No reference set to fit a topic against: start the playground with "
                "--reference FILE (broad texts, a few hundred or more) or --latent-prompts FILE."
            )

    def start(self, examples: Sequence[str], name: str) -> TopicFit:
        """Check ``examples`` and the reference set, then start fitting in the background."""
        with self._starting:
            self.check_ready()
            texts = check_examples(examples)
            self.current = TopicFit(self.playground, texts, name).start()
            return self.current

    def fit(self, examples: Sequence[str], name: str) -> FitStatus:
        """Fit and wait; a fit that does not finish raises its message."""
        run = self.start(examples, name)
        run.wait()
        if run.status.state == FAILED:
            raise PlaygroundError(f"The fit failed: {run.status.error}")
        if run.status.state == CANCELLED:
            raise PlaygroundError("The fit was cancelled; the steering is unchanged.")
        return run.status

    def cancel(self) -> bool:
        """Cancel the running fit; False when none runs."""
        if self.current is None or self.current.status.finished:
            return False
        self.current.cancel()
        return True

    def reset(self) -> str:
        """Steer with the loaded scores again; returns the steering."""
        if self.current is not None and not self.current.status.finished:
            raise PlaygroundError("A topic is being fitted; wait for it or cancel it first.")
        return self.playground.use_scores(self.playground.loaded_scores, topic=None)

    def fitted(self) -> FeatureScores:
        """The scores of the topic the playground steers with."""
        if self.playground.topic is None:
            raise PlaygroundError(
                "No topic of your own yet: fit one first (:topic in the chat, Fit in the app)."
            )
        return self.playground.scores

    def save(self, folder: str | Path) -> Path:
        """Write the topic's artifact to ``folder`` (new, empty, or an earlier save of scores);
        a folder that cannot take it is one line naming the problem."""
        scores = self.fitted()
        if not str(folder).strip():
            raise PlaygroundError("Give a folder to save the topic's scores in.")
        given = str(folder).strip()
        shown = given if given.isprintable() else repr(given)
        try:
            path = Path(given).expanduser()
        except RuntimeError:  # ~name of no user
            user = given[1:].split("/", 1)[0]
            raise PlaygroundError(f"Cannot save to {shown}: there is no user {user}.") from None
        try:
            check_output_folder(path, ARTIFACT_FILES, is_ours=is_artifact)
            return scores.save_pretrained(path)
        except FileExistsError:
            if path.is_file():
                what = "is a file, not a folder"
            elif path.exists() and not path.is_dir():
                what = "is not a folder (a device, a FIFO or a socket)"
            else:
                what = "holds files the playground did not write"
            raise PlaygroundError(f"{shown} {what}; choose a new or empty folder.") from None
        except (NotADirectoryError, PermissionError) as error:  # our own message, path named
            raise PlaygroundError(_one_line(error)) from None
        except (OSError, ValueError) as error:  # a name the system refuses (too long, NUL)
            reason = getattr(error, "strerror", None) or _one_line(error)
            raise PlaygroundError(f"Cannot save to {shown[:120]}: {reason}.") from None

    def save_zip(self, where: str | Path) -> Path:
        """The topic's artifact as ``where/topic-scores.zip`` (a folder ``topic-scores`` inside)."""
        where = Path(where)
        self.save(where / ARTIFACT_NAME)
        archive = shutil.make_archive(str(where / ARTIFACT_NAME), "zip", where, ARTIFACT_NAME)
        return Path(archive)


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
