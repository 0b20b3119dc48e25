"""The bottom layer: errors, logging, atomic outputs and locks, the command-line harness every
entry point runs under, devices and data-parallel processes. It imports nothing else of
harclip."""
