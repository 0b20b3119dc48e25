"""The evaluate stage (`python -m harclip.evaluate <method>`): a checkpoint's scores on val
and test, its zero-shot start and WiSE-FT's curve."""
