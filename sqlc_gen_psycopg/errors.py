"""The one exception type the plugin reports to the user."""


class GenerationError(Exception):
    """A problem with the configuration or the queries; the message is shown by sqlc."""
