"""Deep networks: loading them offline and reading out their layers (nothing is re-exported).

- :mod:`~bids_dnn.dnn.models`: model sources (torchvision, timm, open_clip, TorchScript, custom
  code) -> a :class:`~bids_dnn.dnn.models.LoadedModel`; the catalogue and ``models fetch``;
- :mod:`~bids_dnn.dnn.weights`: the local weights caches and the weights digests;
- :mod:`~bids_dnn.dnn.transforms`: the input transform (resize, crop, normalisation) and its origin;
- :mod:`~bids_dnn.dnn.layers`: layer names, presets and selection;
- :mod:`~bids_dnn.dnn.extract`: batched feature extraction with forward hooks.

Importing this package imports no submodule (and so not torch).
"""
