"""Data engine and dataset format (LeRobot v3 layout)."""
