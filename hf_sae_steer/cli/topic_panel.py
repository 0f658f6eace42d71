"""The web app's "Your topic" panel: paste example texts or upload a file, fit scores to them in
the background (a progress bar and a status line), steer with them, download them as a zip.
The work is done by :mod:`hf_sae_steer.cli.topics`; this module is its Gradio face.

HTTP API: ``/fit_topic`` (texts, one per line or a list; waits for the fit; one JSON answer,
``{"error": message}`` on bad input), ``/reset_topic`` and ``/save_topic`` (the zip).
"""

from __future__ import annotations

import shutil
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from hf_sae_steer.cli.playground import Playground
from hf_sae_steer.cli.settings import PlaygroundError
from hf_sae_steer.cli.topics import (
    DONE,
    FAILED,
    MIN_EXAMPLES,
    FitStatus,
    Topics,
    load_examples,
    parse_examples,
)

FILE_TYPES = [".txt", ".csv", ".jsonl", ".json", ".parquet"]
POLL_SECONDS = 0.25


def examples_from_inputs(text: str | None, file: str | None) -> tuple[list[str], str]:
    """The example texts of the textbox and the uploaded file together, and their name."""
    pasted = parse_examples(text or "")
    loaded = load_examples(file, shown=Path(file).name) if file else []
    parts = [Path(file).name] if file else []
    parts += [f"{len(pasted)} pasted texts"] if pasted else []
    return loaded + pasted, " and ".join(parts) or "no texts"


def _message(error: Exception) -> str:
    if isinstance(error, PlaygroundError):
        return str(error)
    traceback.print_exc()  # the server's log gets the details; the page gets one line
    return f"internal error ({type(error).__name__}): {error}"


def _status_text(status: FitStatus) -> str:
    text = f"**{status.line()}**"
    if status.state == FAILED:
        text = f"⚠️ {status.line()}"
    notes = "".join(f"  \nnote: {note}" for note in status.warnings)
    return text + notes


class TopicPanel:
    """The panel: built where it is created (inside a ``gr.Blocks``), wired by :meth:`connect`
    once the components it updates exist."""

    def __init__(self, playground: Playground) -> None:
        self.playground, self.topics = playground, Topics(playground)
        reference = playground.reference_prompts
        intro = (
            f"It is fitted against the {len(reference)} reference prompts with the library's "
            "default rule and steers every visitor's turns until reset."
            if reference
            else "⚠️ No reference set to fit against: start the app with `--reference FILE`."
        )
        gr.Markdown(
            f"### Your topic\nSteer towards a topic of your own: paste at least {MIN_EXAMPLES} "
            f"example texts (one per line) and/or upload a file, then **Fit**. {intro}"
        )
        with gr.Row():
            self.texts = gr.Textbox(
                label="example texts, one per line", lines=4, scale=4, elem_id="topic-texts",
                placeholder="Bread is a food made from flour, water and yeast, baked in an oven.",
            )  # fmt: skip
            self.upload = gr.File(
                label="or a file (" + ", ".join(FILE_TYPES) + ")", file_types=FILE_TYPES,
                type="filepath", scale=2, height=130, elem_id="topic-file",
            )  # fmt: skip
            with gr.Column(scale=1, min_width=160):
                self.fit = gr.Button("Fit", variant="primary", elem_id="topic-fit")
                self.cancel = gr.Button("Cancel", size="sm", elem_id="topic-cancel")
                self.reset = gr.Button("Loaded scores", size="sm", elem_id="topic-reset")
                self.save = gr.Button("Download (zip)", size="sm", elem_id="topic-save")
        self.state = gr.Markdown("no topic of your own yet", elem_id="topic-status")
        self.download = gr.File(label="your topic's scores (a folder that "
                                "FeatureScores.from_pretrained reads, zipped)", interactive=False,
                                visible=False, elem_id="topic-download")  # fmt: skip
        self._downloads = tempfile.TemporaryDirectory(prefix="hf-sae-steer-topics-")
        self._saved: list[str] = []

    def connect(
        self, outputs: list[gr.components.Component], refresh: Callable[[], list[Any]]
    ) -> None:
        """Wire the buttons and the HTTP API; after a fit or reset, ``outputs`` get
        ``refresh()`` (the report, the latents and the steering, as the app shows them)."""
        topics, playground = self.topics, self.playground
        keep = [gr.skip()] * len(outputs)

        def fit_clicked(
            text: str,
            file: str | None,
            progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's progress bar
        ) -> Iterator[list[Any]]:
            try:
                examples, name = examples_from_inputs(text, file)
                run = topics.start(examples, name)
            except Exception as error:  # noqa: BLE001 - the page shows one line, never a trace
                yield [f"⚠️ {_message(error)}", False]
                return
            while not run.wait(POLL_SECONDS):
                progress(run.status.fraction, desc=run.status.phase)
                yield [_status_text(run.status), False]
            yield [_status_text(run.status), run.status.state == DONE]

        def refresh_if_fitted(fitted: bool) -> list[Any]:
            # Bad input or a failed fit leaves the page alone: refreshing it anyway would race
            # a generation started meanwhile and overwrite its status line.
            return refresh() if fitted else keep

        def reset_clicked() -> list[Any]:
            try:
                topics.reset()
            except Exception as error:  # noqa: BLE001
                return [f"⚠️ {_message(error)}", *keep]
            return ["steering with the loaded scores again", *refresh()]

        def cancel_clicked() -> str:
            return "cancelling …" if topics.cancel() else "no fit is running"

        # The progress bar covers the status line only; the rest follows once the fit ends.
        fitted = gr.State(False)
        self.fit.click(fit_clicked, [self.texts, self.upload], [self.state, fitted],
                       api_visibility="private").then(
            refresh_if_fitted, fitted, outputs, show_progress="hidden", api_visibility="private"
        )  # fmt: skip
        self.reset.click(reset_clicked, None, [self.state, *outputs], api_visibility="private")
        self.save.click(self._save_clicked, None, [self.download, self.state],
                        api_name="save_topic").then(  # the API answers the path; the page
            lambda: gr.File(visible=bool(self._saved)), None, self.download,
            api_visibility="private",
        )  # shows the download (hidden until the first one)
        self.cancel.click(cancel_clicked, None, self.state, api_visibility="private")

        def fit_topic(texts: str | list[str]) -> dict:
            """Fit a topic to example texts (one per line, or a list) and steer with it, as
            JSON; bad input gives {"error": message}."""
            try:
                examples = parse_examples(texts)
                status = topics.fit(examples, f"{len(examples)} example texts")
            except Exception as error:  # noqa: BLE001 - an answer, not a server error
                return {"error": _message(error)}
            return {
                "topic": playground.topic,
                "steering": playground.describe(),
                "report": playground.report(),
                "seconds": status.seconds,
                "warnings": list(status.warnings),
                "error": None,
            }

        def reset_topic() -> dict:
            """Steer with the loaded scores again."""
            try:
                steering = topics.reset()
            except Exception as error:  # noqa: BLE001
                return {"error": _message(error)}
            return {"steering": steering, "error": None}

        gr.api(fit_topic, api_name="fit_topic")
        gr.api(reset_topic, api_name="reset_topic")

    def _save_clicked(self) -> list[Any]:
        """The topic's artifact as a zip to download (only the latest is kept on disk here;
        Gradio serves its own copy)."""
        where = tempfile.mkdtemp(dir=self._downloads.name)
        try:
            archive = self.topics.save_zip(where)
        except Exception as error:  # noqa: BLE001
            shutil.rmtree(where, ignore_errors=True)
            return [None, f"⚠️ {_message(error)}"]  # the API answers no file, and why
        for old in self._saved:
            shutil.rmtree(old, ignore_errors=True)
        self._saved[:] = [where]
        note = f"**saved** your topic's scores ({self.playground.topic}) as a zip"
        return [str(archive), note]
