"""The chat's commands for a topic of your own: ``:topic FILE`` or ``:topic`` (then paste texts,
one per line, an empty line to end; Ctrl-C while it fits cancels), ``:topic reset`` and
``:save DIR``. The work is done by :mod:`hf_sae_steer.cli.topics`; this module prints it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from hf_sae_steer.cli.playground import Playground
from hf_sae_steer.cli.settings import RECOMMENDED, PlaygroundError
from hf_sae_steer.cli.topics import DONE, FAILED, MIN_EXAMPLES, Topics, load_examples

PASTE_PROMPT = "... "
POLL_SECONDS = 0.2
HELP = """  :topic FILE         steer towards your own topic: fit scores to its example texts in a
                      file (.txt one per line, .csv/.jsonl/... with a text column) or dataset
  :topic              the same with texts you paste, one per line (an empty line ends them);
                      Ctrl-C while it fits cancels it
  :topic reset        steer with the loaded scores again
  :save DIR           save your topic's scores (a folder FeatureScores.from_pretrained reads)"""


class TopicCommands:
    """``:topic`` and ``:save`` for a chat on ``playground``, printing with ``say``."""

    def __init__(
        self,
        playground: Playground,
        say: Callable[[str], None],
        read: Callable[[str], str],
        out: TextIO,
        settings_line: Callable[[], str],
    ) -> None:
        self.topics = Topics(playground)
        self.say, self.read, self.out, self.settings_line = say, read, out, settings_line

    def commands(self) -> dict[str, Callable[[str], None]]:
        return {"topic": self.topic, "save": self.save}

    def topic(self, arg: str) -> None:
        if arg == "reset":
            self.topics.reset()
            self.say("steering with the loaded scores again")
            self.say(self.settings_line())
            return
        self.topics.check_ready()  # before asking for texts
        if arg:
            examples, name = load_examples(arg), Path(arg).name
        else:
            examples = self._paste()
            name = f"{len(examples)} pasted texts"
        self._fit(examples, name)

    def save(self, arg: str) -> None:
        if not arg:
            raise PlaygroundError(":save takes a folder: :save DIR")
        path = self.topics.save(arg)
        self.say(f"saved your topic's scores to {path} (FeatureScores.from_pretrained reads it)")

    def _paste(self) -> list[str]:
        self.say(
            f"Paste at least {MIN_EXAMPLES} example texts of your topic, one per line; an empty "
            "line ends them (Ctrl-C cancels)."
        )
        history = _history_length()
        lines: list[str] = []
        try:
            while line := self.read(PASTE_PROMPT).strip():
                lines.append(line)
        except EOFError:  # Ctrl-D ends the texts too
            self.say("")
        except KeyboardInterrupt:
            self.say("")
            raise PlaygroundError("Pasting cancelled; the steering is unchanged.") from None
        finally:
            _forget_history(history)  # the up arrow recalls prompts, not pasted texts
        return lines

    def _fit(self, examples: list[str], name: str) -> None:
        pg = self.topics.playground
        method = pg.settings.method  # the new scores steer as they recommend
        run = self.topics.start(examples, name)
        self.say(
            f"fitting your topic: {len(run.examples)} example texts against "
            f"{len(pg.reference_prompts or [])} reference prompts (Ctrl-C cancels)"
        )
        shown = ""
        with _quiet_loading():
            try:
                while not run.wait(POLL_SECONDS):
                    shown = self._show(run.status.line(), shown)
            except KeyboardInterrupt:
                run.cancel()
                run.wait()
        status = run.status
        if status.state == FAILED:  # one line, as any bad input
            if self.out.isatty():
                print(f"\r{'':<76}\r", end="", file=self.out)  # clear the status line
            raise PlaygroundError(f"The fit failed: {status.error}")
        self._show(status.line(), shown, last=True)
        if status.state != DONE:
            return
        for note in status.warnings:
            self.say(f"  note: {note}")
        if method != RECOMMENDED:
            self.say(f"  note: steering as your topic's scores recommend (not :method {method})")
        self.say(self.settings_line())
        self.say(":report shows its uncertainty report, :latents its latents, :save DIR saves it")

    def _show(self, line: str, shown: str, last: bool = False) -> str:
        """One status line: redrawn in place on a terminal, else printed when it changes."""
        if self.out.isatty():
            end = "\n" if last else ""
            print(f"\r  {line:<72}", end=end, file=self.out, flush=True)
        elif line != shown:
            self.say(f"  {line}")
        return line


class _quiet_loading:
    """Transformers' "Loading weights" bars off while the embedder loads under the status."""

    def __enter__(self) -> None:
        from transformers.utils import logging

        self.was_on = logging.is_progress_bar_enabled()
        logging.disable_progress_bar()

    def __exit__(self, *exc: object) -> None:
        from transformers.utils import logging

        if self.was_on:
            logging.enable_progress_bar()


def _history_length() -> int | None:
    try:
        import readline
    except ImportError:
        return None
    return readline.get_current_history_length()


def _forget_history(length: int | None) -> None:
    if length is None:
        return
    import readline

    while readline.get_current_history_length() > length:
        readline.remove_history_item(readline.get_current_history_length() - 1)
