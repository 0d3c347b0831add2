from bids_dnn.cli.main import run

run()
