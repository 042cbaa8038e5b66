"""Many processes: the launcher's environment and process groups (distributed), laying a model over
the ranks (parallelize: DDP, FSDP2, HSDP, activation checkpointing, compile), DTensor shards, elastic
restarts and per-rank messages.

Importing this package imports nothing heavy; import the modules themselves."""
