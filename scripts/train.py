#!/usr/bin/env python
"""The offline training script: same as `saerec train` (see `--help`)."""

from app.cli import cli

if __name__ == "__main__":
    cli(["train", *__import__("sys").argv[1:]])
