"""Agents: random and scripted explorers, RL training."""
