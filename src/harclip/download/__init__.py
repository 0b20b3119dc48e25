"""The download stage (`python -m harclip.download`): any labelled image set into data/raw in
the Kaggle layout."""
