"""bids_dnn: compare deep neural networks with brains, as a BIDS App."""

__version__ = "0.1.0"
