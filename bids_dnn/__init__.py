"""bids_dnn: compare deep neural networks with brains, as a BIDS App."""

__version__ = "0.1.0"


def pybids_config() -> str:
    """Path of the pybids configuration of the entities BIDS and pybids do not define
    (``layer``, ``stat``), for indexing a bids_dnn output folder.

    Returns
    -------
    str
        Path of ``bids_dnn/data/pybids_config.json``; pass it after pybids' own configurations
        (``model``, ``label`` and ``desc`` come from ``derivatives``)::

            bids.BIDSLayout(OUT_DIR, validate=False, is_derivative=True,
                            config=["bids", "derivatives", bids_dnn.pybids_config()])
    """
    from pathlib import Path

    return str(Path(__file__).resolve().parent / "data" / "pybids_config.json")
