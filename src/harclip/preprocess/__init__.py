"""The preprocess stage (`python -m harclip.preprocess`): data/raw decoded once into the uint8
cache in data/cache, split, with every bad input reported."""
