"""PPO (Stable-Baselines3) inside the world model: a single-file training script.

The vector env runs B rollouts as one batch; :class:`~mg3_env.wrappers.rl.LatestFrame` and
:class:`~mg3_env.wrappers.rl.DiscreteActions` give SB3 an image observation and a discrete action,
and :class:`~mg3_env.sb3.SB3VecEnv` adapts the Gymnasium vector API (same-step autoreset,
``terminal_observation``, and every info: Gymnasium's ``RecordEpisodeStatistics`` gives SB3 its
episode statistics without ``VecMonitor``). The default reward is the distance walked per chunk.
Training logs its progress (steps, steps/s, mean episode return) after every rollout.

    python -m agents.ppo --model tiny-random --num-envs 4 --steps 256
"""

from __future__ import annotations

import argparse
import logging
import time

from gymnasium.vector import AutoresetMode
from gymnasium.wrappers.vector import RecordEpisodeStatistics

from mg3_env.rewards import distance_travelled
from mg3_env.vector import MatrixGameVectorEnv
from mg3_env.wrappers.rl import DiscreteActions, LatestFrame
from world_model.model import WorldModel

__all__ = ["make_sb3_env", "train"]

log = logging.getLogger("agents.ppo")


def make_sb3_env(
    model: str | WorldModel,
    num_envs: int,
    max_chunks: int = 8,
    reward_fn=distance_travelled,
    *,
    render_mode: str | None = None,
):
    """The Matrix-Game vector env wrapped for SB3: image observations, discrete actions, episode
    statistics in ``infos[i]["episode"]``; ``render_mode`` as for the vector env."""
    from mg3_env.sb3 import SB3VecEnv

    env = MatrixGameVectorEnv(
        num_envs,
        model=model,
        reward_fn=reward_fn,
        max_chunks=max_chunks,
        autoreset_mode=AutoresetMode.SAME_STEP,
        render_mode=render_mode,
    )
    return SB3VecEnv(RecordEpisodeStatistics(DiscreteActions(LatestFrame(env))))


def _progress_callback(total: int):
    """An SB3 callback that logs steps, steps/s and the mean episode return after every rollout."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Progress(BaseCallback):
        def _on_training_start(self) -> None:
            self.t0 = time.perf_counter()
            log.info("PPO: %d steps in rollouts of %d x %d envs", total, self.model.n_steps, self.model.n_envs)

        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            done = self.model.num_timesteps
            rate = done / max(time.perf_counter() - self.t0, 1e-9)
            returns = [ep["r"] for ep in self.model.ep_info_buffer]
            mean = f"{sum(returns) / len(returns):.3f} over {len(returns)} episodes" if returns else "no episode yet"
            log.info("PPO: %d/%d steps, %.2f steps/s, mean episode return %s", done, total, rate, mean)

    return Progress()


def train(
    model: str | WorldModel = "default",
    *,
    num_envs: int = 4,
    steps: int = 256,
    n_steps: int = 32,
    policy: str = "CnnPolicy",
    max_chunks: int = 8,
    seed: int = 0,
):
    """Train PPO for ``steps`` env steps (chunks); returns the SB3 model.

    ``CnnPolicy`` needs frames of at least 36x36; use ``MlpPolicy`` for smaller test models.
    """
    from stable_baselines3 import PPO

    env = make_sb3_env(model, num_envs, max_chunks)
    algo = PPO(
        policy,
        env,
        n_steps=n_steps,
        batch_size=n_steps * num_envs // 2,
        n_epochs=2,
        seed=seed,
        verbose=0,
    )
    algo.learn(total_timesteps=steps, callback=_progress_callback(steps))
    env.close()
    return algo


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--num-envs", type=int, default=4)
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--save", default=None, help="where to save the policy (.zip)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    algo = train(args.model, num_envs=args.num_envs, steps=args.steps)
    if args.save:
        algo.save(args.save)
        logging.info("saved the policy to %s", args.save)


if __name__ == "__main__":
    main()
