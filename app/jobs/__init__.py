"""Retraining jobs: the queue, the process that runs one, the launcher and the schedule."""
