"""Environments the controller acts in: Mininet links replaying bandwidth traces under live sessions, and the
simulated backends (chunk-level ABR simulator, viewport-trace replayer, Spark-cluster job simulator)."""
