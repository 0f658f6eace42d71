"""Steering a model: the method table on bare tensors, per-call position state, the
``SteeredModel`` wrapper, the live-steering registry and the guidance logits processor.

- :mod:`~hf_sae_steer.steering.interventions`: what a hook does to a hidden state (no model).
- :mod:`~hf_sae_steer.steering.positions`: which positions a hook steers, per forward pass.
- :mod:`~hf_sae_steer.steering.live`: which models are steered right now.
- :mod:`~hf_sae_steer.steering.steered`: ``SteeredModel`` and ``SteeringSpec``.
- :mod:`~hf_sae_steer.steering.guidance`: ``SteeringLogitsProcessor``.
"""
