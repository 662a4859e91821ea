"""Evaluation of a world model against the ViZDoom simulator on levels it never trained on.

A package above the env and the agents: it rolls models out through
:class:`mg3_env.vector.MatrixGameVectorEnv` (the path users run) and scores them against frames the
simulator renders on held-out levels, at the model's resolution and with the crop of the training
data.

- :mod:`mg3_eval.metrics`: measures on frames (PSNR, luma, image statistics);
- :mod:`mg3_eval.simulator`: simulator episodes and rest starts on held-out levels, commanded replays;
- :mod:`mg3_eval.rollout`: video of a model from first frames and per-frame actions; its VAE round trip;
- :mod:`mg3_eval.idm`: the inverse-dynamics model (labels, data, network, training);
- :mod:`mg3_eval.protocols`: one module per protocol (fidelity, distillation, control, memory,
  stability, speed);
- :mod:`mg3_eval.run`: :class:`EvalOptions` and :func:`run_evaluation` (every part, ``metrics.json``);
- :mod:`mg3_eval.report`: the targets, the printed table, plots;
- :mod:`mg3_eval.cli`: ``mg3 eval``;
- :mod:`mg3_eval.compare`: two runs of the same options, paired per episode (``python -m mg3_eval.compare
  CANDIDATE/metrics.json REFERENCE/metrics.json``): how a candidate is judged against the shipped model.

The functions compute and report; :func:`run_evaluation` puts the values next to the targets without
asserting them.
"""

from mg3_eval.report import REFERENCES, TARGETS, format_table
from mg3_eval.run import PARTS, EvalOptions, run_evaluation

__all__ = ["PARTS", "EvalOptions", "run_evaluation", "TARGETS", "REFERENCES", "format_table"]
