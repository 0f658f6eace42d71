"""The hf-sae-steer playground as a Hugging Face Space, on the shipped demo: the same web app as
``hf-sae-steer app`` (hf_sae_steer.cli.webapp). Spaces run ``python app.py`` and set
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, which ``launch(..., host=None)`` leaves to Gradio."""

from hf_sae_steer.cli.playground import Playground
from hf_sae_steer.cli.webapp import build_app, launch

demo = build_app(Playground.load())  # `demo`: the name Gradio's reload mode looks for

if __name__ == "__main__":
    launch(demo, host=None)
