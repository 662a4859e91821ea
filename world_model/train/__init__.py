"""Training: VAE, DiT flow matching with memory and error buffer, DMD distillation.

Entry point: ``python -m world_model.train`` (see README.md in this folder). Modules: ``frames``
(uint8 frame store), ``autoencoder`` (VAE + pruned decoder), ``encode`` (latent pre-encoding),
``clips`` (training windows in the streaming geometry), ``flow`` + ``error_buffer`` (base and
memory model), ``rollout`` + ``dmd`` (distillation), ``evaluate``, ``export``, ``loop`` /
``checkpoints`` / ``status`` (resumable stages), ``pipeline`` (the whole run).
"""

__all__: list[str] = []
