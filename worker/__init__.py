"""Redis/RQ model workers: one process per accelerator, the pipeline loaded once per process."""
