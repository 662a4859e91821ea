"""mg3_env: Matrix-Game 3.0 as Gymnasium environments."""
