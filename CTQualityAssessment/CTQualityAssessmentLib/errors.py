"""The one exception type that means "the user's input is unusable"."""


class InputError(ValueError):
    """Bad input: the message is one line naming the file and the reason.

    The CLI turns it into exit code 2 with the message on stderr; the Slicer module shows it in a dialog.
    """
