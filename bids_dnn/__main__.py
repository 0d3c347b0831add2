from bids_dnn.cli import run

run()
