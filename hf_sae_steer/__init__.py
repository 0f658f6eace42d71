"""hf_sae_steer: steer Hugging Face causal LMs towards a topic with sparse autoencoders."""

__version__ = "0.1.0"
