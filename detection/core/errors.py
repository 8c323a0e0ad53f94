"""The base of every error meant for a person rather than a traceback."""


class SppnetError(Exception):
    """Bad input (a file, a dataset, a model, weights): the message is one line naming what and why.

    The command line prints these without a traceback; anything else is a bug and keeps its traceback.
    """
