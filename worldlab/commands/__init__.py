"""Thin argparse front ends for the `worldlab` subcommands.

Each module here defines `register(subparsers)` and keeps imports light until the command runs.
"""
