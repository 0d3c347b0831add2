"""The feature store: model activations on disk, one HDF5 file per model and stimulus set.

- :mod:`~bids_dnn.features.store`: content keys, writing (atomic, locked) and reading feature files;
- :mod:`~bids_dnn.features.reduction`: optional dimensionality reduction (sparse random projection, PCA);
- :mod:`~bids_dnn.features.disk`: free-space check before writing, fsync after.

Nothing is re-exported: importing this package imports neither h5py nor torch.
"""
