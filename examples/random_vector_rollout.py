"""A batch of random-agent rollouts through ``gymnasium.make_vec``; prints the commanded poses.

python examples/random_vector_rollout.py --num-envs 4 --chunks 5
"""

from __future__ import annotations

import argparse
import logging

import gymnasium
import numpy as np

import mg3_env
from agents.random_agent import RandomAgent
from world_model.checks import positive_arg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--num-envs", type=positive_arg, default=4)
    p.add_argument("--chunks", type=positive_arg, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    envs = gymnasium.make_vec(mg3_env.ENV_ID, num_envs=args.num_envs, model=args.model)
    agents = [RandomAgent(seed=args.seed + i) for i in range(args.num_envs)]
    obs, info = envs.reset(seed=args.seed)
    for k in range(args.chunks):
        acts = [a.act() for a in agents]
        action = {key: np.stack([a[key] for a in acts]) for key in ("keyboard", "mouse")}
        obs, reward, terminated, truncated, info = envs.step(action)
        for i in range(args.num_envs):
            x, y, _, pitch, yaw = obs["pose"][i, -1]
            logging.info("chunk %d env %d: x=%.0f y=%.0f pitch=%.1f yaw=%.1f", k + 1, i, x, y, pitch, yaw)
    envs.close()


if __name__ == "__main__":
    main()
