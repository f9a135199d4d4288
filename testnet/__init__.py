"""Local test networks: real node and agent processes on loopback, driven by launch.py."""
