"""The model layer: backbones and the classifier head, what trains (tuning) and how (optim),
checkpoints, the device-side views of the uint8 cache and the feed that batches it, and
scoring. Above runtime, config and data; below the stage packages."""
