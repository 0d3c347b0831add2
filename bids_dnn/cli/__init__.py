"""The command line: the BIDS App parser and sub-commands (`main`), argument types (`arguments`), SLURM
scripts (`slurm`). The console script is `bids_dnn.cli.main:run`."""
