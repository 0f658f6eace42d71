"""``hf-sae-steer app``: the playground as a Gradio web app (the ``[app]`` extra).

A prompt box, base vs steered side by side (streamed token by token), then three sampled
continuations of each with the topic's words marked, the steering controls, what the steering
does in words, the uncertainty report and the top latents with the tokens that fire them most.
The same :func:`build_app` runs locally (``serve``, bound to 127.0.0.1), as ``python -m
hf_sae_steer.cli.webapp`` and as a Hugging Face Space (``spaces/app.py``) on the shipped demo.
HTTP API (``gradio_client``): ``/generate`` (what the button does, streamed), ``/samples``
(the marked samples as HTML, and the effect in words, which follow it), ``/compare`` (one
JSON answer; bad input gives ``{"error": message}``), ``/effect`` (the effect as JSON);
``/fit_topic``, ``/reset_topic`` and ``/save_topic`` for a topic of your own
(:mod:`hf_sae_steer.cli.topic_panel`).
"""

from __future__ import annotations

import errno
import html
import os
import socket
import sys
import traceback
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls, works offline
import gradio as gr  # noqa: E402 - after the switch above

from hf_sae_steer.cli.demo import recommended_line  # noqa: E402
from hf_sae_steer.cli.playground import Output, Playground  # noqa: E402
from hf_sae_steer.cli.samples import TOPIC_TOKENS, describe_options  # noqa: E402
from hf_sae_steer.cli.settings import (  # noqa: E402
    METHOD_CHOICES,
    PlaygroundError,
    Settings,
    parse_direction,
    parse_method,
    parse_positions,
    parse_strength,
    parse_switch,
    parse_tokens,
)
from hf_sae_steer.cli.topic_panel import TopicPanel  # noqa: E402
from hf_sae_steer.models import context_length  # noqa: E402
from hf_sae_steer.steering.names import DIRECTIONS, POSITIONS  # noqa: E402

TITLE = "hf-sae-steer playground"
LATENT_HEADERS = ["rank", "latent", "score", "weight", "fires most on (token, activation)",
                  "top example"]  # fmt: skip
ERROR_CHOICES = ["default", "on", "off"]
# System fonts: the default theme fetches Google Fonts, which an offline machine cannot reach.
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "sans-serif"],
    font_mono=["ui-monospace", "Consolas", "monospace"],
)
CSS = (
    ".output textarea { font-family: ui-monospace, monospace; }\n"
    "#samples li { font-family: ui-monospace, monospace; margin-bottom: 0.3em; }\n"
    "#samples mark { background: #f5d76e; padding: 0 0.15em; border-radius: 0.2em; }"
)
SAMPLES = 3  # sampled continuations shown per model


def settings_from_controls(
    playground: Playground,
    method: str,
    strength: str | float | None,
    positions: str,
    preserve_error: str,
    max_new_tokens: float,
    sample: bool,
    direction: str = "toward",
) -> Settings:
    """The settings the controls mean (sampling options and seed stay the playground's)."""
    return replace(
        playground.settings,
        method=parse_method(method or ""),
        strength=parse_strength(strength),
        positions=parse_positions(positions or ""),
        direction=parse_direction(direction or "toward"),
        preserve_error=parse_switch(preserve_error, "preserve_error"),
        max_new_tokens=parse_tokens(max_new_tokens),
        do_sample=bool(parse_switch(sample, "sample")),
    )


def _label(name: str, output: Output) -> str:
    return f"{name} · {output.seconds:.2f} s" if output.seconds is not None else name


def _status(outputs: dict[str, Output], steering: str) -> str:
    waiting = [name for name, out in outputs.items() if out.seconds is None]
    state = f"generating {waiting[0]} …" if waiting else "done"
    times = " · ".join(
        f"{name} {out.seconds:.2f} s" for name, out in outputs.items() if out.seconds is not None
    )
    return f"**{state}** {times}  \nsteering: {steering}"


def _failure(error: Exception) -> str:
    if isinstance(error, PlaygroundError):
        return f"⚠️ {error}"
    traceback.print_exc()  # the server's log gets the details; the page gets one line
    return f"⚠️ internal error ({type(error).__name__}): {error}"


def latent_rows(playground: Playground, k: int = 10) -> list[list[Any]]:
    """The top latents as table rows (LATENT_HEADERS)."""
    return [
        [
            row.rank, row.latent, round(row.score, 3),
            "" if row.weight is None else round(row.weight, 3),
            row.fires_on(),
            row.examples[0].prompt if row.examples else "",
        ]
        for row in playground.top_latents(k)
    ]  # fmt: skip


def report_markdown(playground: Playground) -> str:
    """The recommended steering and the uncertainty report of the scores steered with."""
    report = replace(playground.scores.report(), effect=None)  # its own panel shows the effect
    return f"{recommended_line(playground.scores)}\n```\n{report}\n```"


def effect_markdown(playground: Playground, settings: Settings | None = None) -> str:
    """What the steering of ``settings`` does in words: the tokens it raises and lowers most."""
    effect = playground.effect(settings)
    words = ", ".join(effect.words(TOPIC_TOKENS)) or "none"
    return f"**Words it raises most:** {words}\n```\n{effect.format(latents=3)}\n```"


def samples_html(playground: Playground, prompt: str, settings: Settings) -> str:
    """SAMPLES sampled continuations of ``prompt`` by the base model and the steering, the
    topic's words in ``<mark>``."""
    shown = playground.samples(prompt, settings, SAMPLES)
    parts = [
        f"<p>{SAMPLES} sampled continuations each ({html.escape(describe_options())}); "
        "<mark>marked</mark>: the words the steering raises most.</p>"
    ]
    for name, samples in shown.items():
        count = sum(len(s.spans) for s in samples)
        items = "".join(f"<li>{html.escape(prompt)}<b>{s.marked('html')}</b></li>"
                        for s in samples)  # fmt: skip
        parts.append(f"<h4>{name} ({count} marked)</h4><ol>{items}</ol>")
    return "\n".join(parts)


def build_app(playground: Playground) -> gr.Blocks:
    """The web UI on ``playground`` (launch it with :func:`serve`, or ``.launch(theme=THEME)``)."""
    names, initial = playground.names, playground.settings
    limit = context_length(playground.model, playground.tokenizer) or 512
    with gr.Blocks(title=TITLE, analytics_enabled=False) as app:
        gr.Markdown(f"## {TITLE}\n{playground.setup_line()}")
        with gr.Row():
            prompt = gr.Textbox(label="prompt", placeholder="I went to see", lines=2, scale=5,
                                elem_id="prompt")  # fmt: skip
            button = gr.Button("Generate", variant="primary", scale=1, elem_id="generate")
        with gr.Row():
            method = gr.Dropdown(list(METHOD_CHOICES), value=initial.method, label="method",
                                 elem_id="method")  # fmt: skip
            strength = gr.Textbox(
                value="" if initial.strength is None else f"{initial.strength:g}",
                label="strength", placeholder="default", elem_id="strength",
            )  # fmt: skip
            positions = gr.Radio(list(POSITIONS), value=initial.positions, label="positions",
                                 elem_id="positions")  # fmt: skip
            direction = gr.Radio(list(DIRECTIONS), value=initial.direction, label="direction",
                                 elem_id="direction")  # fmt: skip
            keep = {None: "default", True: "on", False: "off"}[initial.preserve_error]
            error = gr.Radio(ERROR_CHOICES, value=keep, label="preserve_error",
                             elem_id="preserve-error")  # fmt: skip
            tokens = gr.Slider(1, min(limit - 1, 512), value=initial.max_new_tokens, step=1,
                               label="new tokens", elem_id="tokens")  # fmt: skip
            sample = gr.Checkbox(value=initial.do_sample, label="sample", elem_id="sample")
        status = gr.Markdown(f"steering: {playground.describe()}", elem_id="status")
        with gr.Row():
            boxes = [
                gr.Textbox(
                    label=name,
                    lines=5,
                    interactive=False,
                    elem_id=f"out-{name}",
                    elem_classes="output",
                )  # fmt: skip
                for name in names
            ]
        gr.Markdown("### Sampled continuations, the topic's words marked")
        samples = gr.HTML("<p>Generate to see samples.</p>", elem_id="samples")
        gr.Markdown("### What the steering does, in words")
        effect = gr.Markdown(effect_markdown(playground), elem_id="effect")
        topic = TopicPanel(playground)  # wired below, once the report and the table exist
        with gr.Row():
            with gr.Column(scale=2):
                gr.Markdown("### Uncertainty report of the scores")
                report = gr.Markdown(report_markdown(playground), elem_id="report")
            with gr.Column(scale=3):
                gr.Markdown("### Top latents, and the tokens that fire them most")
                table = gr.Dataframe(
                    headers=LATENT_HEADERS, interactive=False, wrap=True, max_chars=90,
                    column_widths=["7%", "10%", "9%", "10%", "32%", "32%"], elem_id="latents",
                )  # fmt: skip

        def generate(
            prompt: str, method: str, strength: str, positions: str, error: str,
            tokens: float, sample: bool, direction: str = "toward",
        ) -> Iterator[list[Any]]:  # fmt: skip
            try:
                settings = settings_from_controls(
                    playground, method, strength, positions, error, tokens, sample, direction
                )
                steering = playground.describe(settings)
                for outputs in playground.stream(prompt, settings):
                    texts = [
                        gr.Textbox(value=out.text, label=_label(name, out))
                        for name, out in outputs.items()
                    ]
                    yield [*texts, _status(outputs, steering)]
            except Exception as failure:  # noqa: BLE001 - the page shows one line, never a trace
                yield [*(gr.Textbox(value="", label=name) for name in names), _failure(failure)]

        def sampled(
            prompt: str, method: str, strength: str, positions: str, error: str,
            tokens: float, sample: bool, direction: str = "toward",
        ) -> list[str]:  # fmt: skip
            """The marked samples (HTML) and the effect in words of the controls' steering."""
            try:
                settings = settings_from_controls(
                    playground, method, strength, positions, error, tokens, sample, direction
                )
                return [samples_html(playground, prompt, settings),
                        effect_markdown(playground, settings)]  # fmt: skip
            except Exception as failure:  # noqa: BLE001 - the page shows one line, never a trace
                return [f"<p>{html.escape(_failure(failure))}</p>", gr.skip()]

        controls = [prompt, method, strength, positions, error, tokens, sample, direction]
        button.click(generate, controls, [*boxes, status], api_name="generate").then(
            sampled, controls, [samples, effect], api_name="samples"
        )
        prompt.submit(generate, controls, [*boxes, status], api_visibility="private").then(
            sampled, controls, [samples, effect], api_visibility="private"
        )
        app.load(lambda: latent_rows(playground), None, table, api_name="latents")

        def refreshed() -> list[Any]:  # what a topic of your own changes on the page
            steering = f"steering: {playground.describe()}"
            return [report_markdown(playground), latent_rows(playground), steering,
                    effect_markdown(playground)]  # fmt: skip

        topic.connect(outputs=[report, table, status, effect], refresh=refreshed)

        def compare(
            prompt: str,
            method: str = "recommended",
            strength: str = "",
            positions: str = "all",
            preserve_error: str = "default",
            max_new_tokens: int = 32,
            sample: bool = False,
            direction: str = "toward",
        ) -> dict:
            """Every continuation with its time, as JSON; bad input gives {"error": message}."""
            try:
                settings = settings_from_controls(
                    playground, method, strength, positions, preserve_error, max_new_tokens,
                    sample, direction,
                )  # fmt: skip
                outputs = playground.run(prompt, settings)
                steering = playground.describe(settings)
            except Exception as failure:  # noqa: BLE001 - an answer, not a server error
                return {"error": _failure(failure).removeprefix("⚠️ ")}
            return {
                "steering": steering,
                "outputs": {n: {"text": o.text, "seconds": o.seconds} for n, o in outputs.items()},
                "error": None,
            }

        gr.api(compare, api_name="compare")

        def effect_json(
            method: str = "recommended",
            strength: str = "",
            positions: str = "all",
            preserve_error: str = "default",
            direction: str = "toward",
        ) -> dict:
            """What a steering does in words, as JSON; bad input gives {"error": message}."""
            try:
                settings = settings_from_controls(
                    playground, method, strength, positions, preserve_error,
                    playground.settings.max_new_tokens, playground.settings.do_sample, direction,
                )  # fmt: skip
                found = playground.effect(settings)
                steering = playground.describe(settings)
            except Exception as failure:  # noqa: BLE001 - an answer, not a server error
                return {"error": _failure(failure).removeprefix("⚠️ ")}
            return {"steering": steering, "words": found.words(TOPIC_TOKENS),
                    "effect": found.to_dict(), "error": None}  # fmt: skip

        gr.api(effect_json, api_name="effect")
    return app


def check_address(host: str | None, port: int | None) -> None:
    """Refuse, before anything loads, an address the server could not listen on: one line
    saying whether the host or the port is wrong (Gradio's own error speaks of port ranges)."""
    if host is None or port is None:
        return  # Gradio's choice (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)
    if not 1 <= port <= 65535:
        raise ValueError(f"--port must be from 1 to 65535; got {port}.")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as error:
        raise ValueError(
            f"--host {host!r} is not a valid address ({error}): pass an address of this "
            "machine, e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every network)."
        ) from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ValueError(
                    f"The port {port} on {host} is busy (another server listens there): pass "
                    "another --port."
                ) from None
            raise ValueError(
                f"--host {host!r} is not an address of this machine ({error.strerror}): pass "
                "one of its addresses, e.g. 127.0.0.1 or 0.0.0.0."
            ) from None


def serve(
    playground: Playground,
    *,
    host: str | None = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
) -> None:
    """Build the app on ``playground`` and serve it until Ctrl-C (see :func:`launch`)."""
    launch(build_app(playground), host=host, port=port, share=share)


def launch(
    app: gr.Blocks, *, host: str | None = "127.0.0.1", port: int | None = None, share: bool = False
) -> None:
    """Serve ``app`` until Ctrl-C. ``host``/``port`` None: Gradio's choice (GRADIO_SERVER_NAME
    and GRADIO_SERVER_PORT from the environment, as on a Space; else 127.0.0.1:7860)."""
    app.queue(default_concurrency_limit=1)  # one model: turns run one at a time anyway
    app.launch(server_name=host, server_port=port, share=share, theme=THEME, css=CSS, quiet=False)


def main() -> None:
    """``python -m hf_sae_steer.cli.webapp``: the app on the shipped demo."""
    serve(Playground.load(), host=None)


if __name__ == "__main__":
    sys.exit(main())
