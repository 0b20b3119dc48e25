"""The train_clip / train_sglip / train_aclip stages (`python -m harclip.train <method>`): one
engine for every method, each supplying an Objective (A-CLIP's in `aclip`), the run's records
and its resume state."""
