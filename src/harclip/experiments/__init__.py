"""`python -m harclip.experiments`: the sweeps through DVC's experiment queue, and the tables and
figures that collect them."""
