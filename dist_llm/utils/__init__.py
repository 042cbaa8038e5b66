"""Small utilities the components share: atomic writes, JSON files, file hashes, RNG state, devices, pipes.

Importing this package imports nothing heavy; import the modules themselves."""
