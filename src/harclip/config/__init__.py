"""params.yaml: its typed sections (`schema`) and reading them (`params`); `python -m
harclip.config` is the check_params stage. Above the runtime layer, below everything else."""
