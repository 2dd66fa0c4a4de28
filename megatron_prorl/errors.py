"""The errors a user can fix: bad configs, data, model or checkpoint files, an occupied run
directory. The command line reports them as one line (``prorl: error: ...``, exit code 2),
from whichever rank found them; anything else is an internal error and shows its traceback."""


class UserError(Exception):
    """Input the user can fix; the message names the file, key or value at fault."""


class DataError(UserError, ValueError):
    """A data source that cannot be used (the message names it and why)."""
