"""Entry points of the bin/ scripts: a docopt usage, a verb table, and calls
into the library. Nothing here is needed by anything else."""
