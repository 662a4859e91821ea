"""Training: VAE, DiT flow matching with memory and error buffer, DMD distillation."""
