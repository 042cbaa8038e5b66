"""The one exception type the tokenizer raises for bad input (files, values, arguments)."""


class TokenizerError(ValueError):
    """Bad tokenizer input: a missing or malformed file, an invalid argument or value.

    A ValueError subclass so callers that already catch ValueError keep working; the message
    always names the file, key or value at fault and what was expected.
    """
