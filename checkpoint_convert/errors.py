"""The conversion's error type: bad input data (files, tensors, checkpoints), named precisely;
and how to tell a full disk among the errors of a write (torch-free: the metrics log uses it)."""

import errno


class ConversionError(ValueError):
    """Input that cannot be converted; the message names the file, tensor or field at fault."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps: a cause, torch.distributed.checkpoint's per-rank
    failures) is 'no space left on device' (or a quota)."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e):
            return True
        todo += [e.__cause__, e.__context__]
        for failure in (getattr(e, "failures", None) or {}).values():  # CheckpointException
            todo.append(failure[0] if isinstance(failure, tuple) else failure)
    return False
