"""The errors a user can fix: bad configs, data, model or checkpoint files, an occupied run
directory. The command line reports them as one line (``prorl: error: ...``, exit code 2),
from whichever rank found them; a :class:`RunFailure` (a rank lost) as one line with exit code
1; anything else is an internal error and shows its traceback."""

from checkpoint_convert.errors import ConversionError
from megatron_prorl.builtin import BuiltinNotFound
from megatron_prorl.config import ConfigError


class UserError(Exception):
    """Input the user can fix; the message names the file, key or value at fault."""


class DataError(UserError, ValueError):
    """A data source that cannot be used (the message names it and why)."""


class RunFailure(Exception):
    """A run ended by what happened to it, not by its input (a rank killed, or stopped showing
    signs of life): one line saying what and where (exit code 1); nothing of ours to trace."""


# Every error reported as one line: the package's own, a config value and a built-in name
# (config.py and builtin.py sit below this module and raise their own types), and the
# converter's (a package of its own).
USER_ERRORS = (UserError, ConfigError, BuiltinNotFound, ConversionError)
