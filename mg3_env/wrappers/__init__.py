"""Gymnasium wrappers: rollout recording."""
