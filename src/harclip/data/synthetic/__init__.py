"""Drawn data sets: the HAR stand-in (`scenes`, the demo's data) and the parts and pen
(`drawing`) the pretraining world (`harclip.pretrain.world`) draws with too."""
