"""``hf-sae-steer chat``: the reference demo's prompt loop in a terminal.

Type a prompt and see the base and steered continuations (and a compared model's), each with
its time; ``:`` commands change the steering. Bad input prints one line and the loop goes on;
Ctrl-D, Ctrl-C and ``:quit`` leave it with status 0.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import TextIO

from hf_sae_steer.cli.chat_topics import HELP as TOPIC_HELP
from hf_sae_steer.cli.chat_topics import TopicCommands
from hf_sae_steer.cli.playground import NOT_TEXT, Playground, is_text
from hf_sae_steer.cli.settings import (
    METHOD_CHOICES,
    RECOMMENDED,
    PlaygroundError,
    parse_direction,
    parse_method,
    parse_positions,
    parse_seed,
    parse_strength,
    parse_switch,
    parse_tokens,
)

PROMPT = "> "
GOODBYE = "bye"
MAX_LATENTS = 100
HELP = f"""Type a prompt to see base and steered continuations. Commands:
  :method NAME        {", ".join(METHOD_CHOICES)}
  :strength X         a number, or default (the method's; recommended: the scores')
  :positions WHICH    all, prompt or generated
  :direction WHICH    toward (write the topic in) or away (keep it out)
  :error on|off       preserve_error: keep the SAE's reconstruction error (or default)
  :tokens N           new tokens per continuation
  :sample on|off      sample (seeded) instead of greedy decoding
  :seed N             the seed of sampling
  :latents [N]        the top N latents of the scores and the tokens that fire them most
  :report             the uncertainty report of the scores
  :effect             what the steering does, in words: the tokens it raises and lowers most
{TOPIC_HELP}
  :settings           the current steering
  :history            the prompts typed so far (also: the up arrow)
  :help               this list
  :quit               leave (or Ctrl-D, Ctrl-C)"""


class Chat:
    """The commands and turns of the loop, printing to ``out``."""

    def __init__(
        self,
        playground: Playground,
        out: TextIO,
        *,
        debug: bool = False,
        read: Callable[[str], str] = input,
    ) -> None:
        self.playground, self.out, self.debug, self.read = playground, out, debug, read
        self.history: list[str] = []
        self.commands: dict[str, Callable[[str], None]] = {
            "method": lambda arg: self._set(method=parse_method(arg)),
            "strength": lambda arg: self._set(strength=parse_strength(arg)),
            "positions": lambda arg: self._set(positions=parse_positions(arg)),
            "direction": lambda arg: self._set(
                direction=parse_direction(arg), method=RECOMMENDED, strength=None
            ),
            "error": lambda arg: self._set(preserve_error=parse_switch(arg, ":error")),
            "tokens": lambda arg: self._set(max_new_tokens=parse_tokens(arg)),
            "sample": lambda arg: self._set(do_sample=bool(parse_switch(arg or "on", ":sample"))),
            "seed": lambda arg: self._set(seed=parse_seed(arg)),
            "latents": self._latents,
            "report": lambda _: self.say(self.playground.report()),
            "effect": lambda _: self.say(self.effect_text()),
            "settings": lambda _: self.say(self.settings_line()),
            "history": self._history,
            "help": lambda _: self.say(HELP),
        }
        topics = TopicCommands(playground, self.say, lambda p: self.read(p), out,
                               self.settings_line)  # fmt: skip
        self.commands.update(topics.commands())  # :topic, :save

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def banner(self) -> None:
        self.say(f"hf-sae-steer chat: {self.playground.setup_line()}")
        self.say(self.settings_line())
        self.say("Type a prompt; :help for commands; Ctrl-D to quit.")

    def settings_line(self) -> str:
        s = self.playground.settings
        decoding = f"sampled, seed {s.seed}" if s.do_sample else "greedy"
        return f"steering: {self.playground.describe()}; {s.max_new_tokens} new tokens, {decoding}"

    def effect_text(self) -> str:
        """The current steering's effect in words, under the steering it describes."""
        effect = self.playground.effect()
        return f"{self.settings_line()}\n{effect.format(latents=3)}"

    def handle(self, line: str) -> bool:
        """Run one line (a prompt or a command); False when the user asked to quit."""
        line = line.strip()
        if line in (":q", ":quit", ":exit"):
            return False
        if not is_text(line):
            self.say(f"  ! {NOT_TEXT}")
            return True
        try:
            if line.startswith(":"):
                name, _, arg = line[1:].partition(" ")
                if name not in self.commands:
                    raise PlaygroundError(f"Unknown command :{name}; :help lists the commands.")
                self.commands[name](arg.strip())
            else:
                self.turn(line)
        except PlaygroundError as error:
            self.say(f"  ! {error}")
        except Exception as error:  # noqa: BLE001 - one line, the loop goes on (--debug: all)
            if self.debug:
                traceback.print_exc()
            self.say(f"  ! internal error ({type(error).__name__}): {error}")
        return True

    def turn(self, prompt: str) -> None:
        outputs = self.playground.run(prompt)
        self.history.append(prompt)
        width = max(len(name) for name in outputs)
        for name, output in outputs.items():
            self.say(f"  {name:<{width}}  {output.seconds or 0.0:6.2f} s  {output.text!r}")

    def _set(self, **change: object) -> None:
        self.playground.update(**change)
        self.say(self.settings_line())

    def _latents(self, arg: str) -> None:
        if arg and not (arg.isdigit() and 1 <= int(arg) <= MAX_LATENTS):
            raise PlaygroundError(f":latents takes a number from 1 to {MAX_LATENTS}; got {arg!r}.")
        rows = self.playground.top_latents(int(arg or 10))
        self.say("  rank  latent   score  weight  fires most on (token, activation)")
        for row in rows:
            weight = "" if row.weight is None else f"{row.weight:.3f}"
            fires = row.fires_on()
            self.say(f"  {row.rank:>4}  {row.latent:>6}  {row.score:6.3f}  {weight:>6}  {fires}")

    def _history(self, _: str) -> None:
        for i, prompt in enumerate(self.history, 1):
            self.say(f"  {i:>3}  {prompt}")
        if not self.history:
            self.say("  (no prompts yet)")


def run_chat(
    playground: Playground,
    *,
    debug: bool = False,
    out: TextIO | None = None,
    read: Callable[[str], str] = input,
) -> None:
    """The loop: read a line, run it, until Ctrl-D, Ctrl-C or ``:quit``."""
    try:
        import readline  # noqa: F401 - line editing and up-arrow history for input()
    except ImportError:  # not on every platform; the loop works without it
        pass
    if read is input and hasattr(sys.stdin, "reconfigure"):
        # Bytes that are not UTF-8 arrive as lone surrogates, refused line by line, rather than
        # as a decoding error that would end the loop.
        sys.stdin.reconfigure(errors="surrogateescape")
    chat = Chat(playground, out or sys.stdout, debug=debug)
    chat.read = read  # :topic reads pasted texts the way the loop reads lines
    chat.banner()
    try:
        while chat.handle(read(PROMPT)):
            pass
    except (EOFError, KeyboardInterrupt):
        chat.say("")  # the terminal's cursor is still on the prompt line
    chat.say(GOODBYE)
