"""The one exception of dist_llm.data (its own module so that every data module can raise it)."""


class DataError(ValueError):
    """Bad corpus input or prepared data; the message names the file and what to do."""
