"""The error that every data reader of the tasks raises on bad input."""


class DataError(ValueError):
  """Missing or invalid input data. The message names the path."""
