"""`python -m harclip.predict`: classify image files with a trained checkpoint."""
