"""Adapters to the files bids_dnn reads and writes (nothing is re-exported: import the module).

Inputs:

- :mod:`~bids_dnn.io.bids`: the BIDS dataset and fMRIPrep derivatives through pybids (labels,
  filters, runs, ready-made betas maps);
- :mod:`~bids_dnn.io.run_files`: what a run's files state (TR: sidecar vs. header; confounds);
- :mod:`~bids_dnn.io.betas`: the sidecars naming the stimulus of each volume of ready-made betas;
- :mod:`~bids_dnn.io.stimuli`: events -> the ordered stimulus set (``stimuli.tsv``, safety checks);
- :mod:`~bids_dnn.io.stimulus_loading`: checking and loading stimulus files (images, video frames);
- :mod:`~bids_dnn.io.media`: any still image -> the 8-bit RGB picture a network sees;
- :mod:`~bids_dnn.io.input_dataset`: the identity of the input dataset an output folder was made from.

Outputs and environment:

- :mod:`~bids_dnn.io.derivatives`: every output path, sidecar and root file; atomic writes;
- :mod:`~bids_dnn.io.status`: a participant's status file as the group level reads it;
- :mod:`~bids_dnn.io.container`: what bids_dnn needs to know and set inside a container image.

Importing this package imports neither torch nor h5py.
"""
