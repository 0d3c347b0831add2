"""The command line: parser, sub-commands and SLURM scripts."""

from bids_dnn.cli.main import main, run

__all__ = ["main", "run"]
