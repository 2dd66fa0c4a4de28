"""Test runner executed INSIDE the sandbox by the system interpreter (stdlib only, Python >= 3.9).

It is passed as ``python3 -I -S -c <this source>`` with the job as JSON on stdin:
``{"code": str, "total_s": float, "tests": [{"stdin": str} | {"fn_name": str, "args": list},
each with "limit_s": float and "cap": int (bytes of output kept)]}``. It compiles the program
once, then runs every test in a forked child (its own process group, stdin/stdout/stderr on
files in the private working directory, per-test CPU and file-size limits, killed with its
group at the per-test timeout), reaps what the tests leave behind (it is their subreaper, or
the PID namespace's init), and writes one JSON report to the result channel (the original
stdout, which no test process holds). It reports what the program printed or returned, never whether that is right: the
expected outputs never enter the sandbox, so a program cannot read them.
"""

import builtins
import json
import math
import os
import resource
import select
import signal
import sys
import time
import traceback

ERROR_TAIL = 400


def _write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


def _open_std(fd, mode):
    return open(fd, mode, closefd=False, encoding="utf-8", errors="replace")


def _run_child(code, test, index, limit_s, cap):
    """In the forked child: redirect the standard streams, apply limits, run, exit."""
    exit_code = 0
    try:
        os.setpgid(0, 0)
        stdin = os.open("in%d" % index, os.O_RDONLY) if "stdin" in test else os.open(os.devnull, os.O_RDONLY)
        os.dup2(stdin, 0)
        os.dup2(os.open("out%d" % index, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 1)
        os.dup2(os.open("err%d" % index, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 2)
        resource.setrlimit(resource.RLIMIT_FSIZE, (cap + 1, cap + 1))  # one byte over: detectable
        cpu = int(math.ceil(limit_s)) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        sys.stdin, sys.stdout, sys.stderr = _open_std(0, "r"), _open_std(1, "w"), _open_std(2, "w")
        sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
        sys.argv = ["solution.py"]
        # Function-call tests import the program as a module: its __main__ block does not run.
        namespace = {"__name__": "solution" if "fn_name" in test else "__main__", "__builtins__": builtins}
        try:
            exec(code, namespace)
            if "fn_name" in test:
                result = _call(namespace, test["fn_name"], test["args"])
                with open("ret%d" % index, "w") as f:
                    json.dump({"value": result}, f, default=_jsonable)
        except SystemExit as exc:
            exit_code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            exit_code = 1
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            exit_code = exit_code or 1
    except BaseException:
        exit_code = 70
    os._exit(exit_code)


def _jsonable(value):
    if isinstance(value, (set, frozenset)):
        try:
            return sorted(value)
        except TypeError:
            return list(value)
    return repr(value)


def _call(namespace, fn_name, args):
    """A top-level function, or a method of ``class Solution`` (LeetCode style)."""
    fn = namespace.get(fn_name)
    if fn is None and isinstance(namespace.get("Solution"), type):
        fn = getattr(namespace["Solution"](), fn_name, None)
    if not callable(fn):
        raise NameError("the program defines no function %r" % fn_name)
    result = fn(*args) if isinstance(args, list) else fn(args)
    return list(result) if isinstance(result, tuple) else result


def _wait(pid, limit_s):
    """Wait for ``pid`` up to ``limit_s``; its wait status, or None on timeout."""
    deadline = time.monotonic() + limit_s
    pidfd = None
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pidfd = None
    try:
        delay = 0.0005
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if pidfd is not None:
                select.select([pidfd], [], [], remaining)
            else:
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.01)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _prctl(option, value):
    try:
        import ctypes

        ctypes.CDLL(None).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _become_init():
    """Continue in a child that is the init of the PID namespace the sandbox may have unshared
    for the harness's children (rlimit mode): when it ends, the kernel kills everything the
    tests left. Either way the runner is the subreaper of the tests' orphans, so it reaps them
    instead of leaving zombies to the host. The original process only relays the exit status."""
    if os.getpid() != 1:  # bwrap --as-pid-1 already made the harness the init
        pid = os.fork()
        if pid:
            _, status = os.waitpid(pid, 0)
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
        _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the relay
    _prctl(36, 1)  # PR_SET_CHILD_SUBREAPER


def reap_orphans():
    """Collect every exited child without blocking (as a subreaper, orphans too)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _read_capped(path, cap):
    try:
        with open(path, "rb") as f:
            data = f.read(cap + 1)
    except OSError:
        return b""
    return data


def _run_test(code, test, index, limit_s, cap, channel):
    if "stdin" in test:
        with open("in%d" % index, "w", encoding="utf-8") as f:
            f.write(test["stdin"])
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(channel)
        _run_child(code, test, index, limit_s, cap)
    status = _wait(pid, limit_s)
    elapsed = time.monotonic() - start
    try:
        os.killpg(pid, signal.SIGKILL)  # the test's leftovers (background children)
    except OSError:
        pass
    if status is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    reap_orphans()
    out = _read_capped("out%d" % index, cap)
    err = _read_capped("err%d" % index, 1 << 16)[-ERROR_TAIL:].decode("utf-8", "replace")
    ret = _read_capped("ret%d" % index, cap)
    for name in ("in", "out", "err", "ret"):
        try:
            os.unlink("%s%d" % (name, index))
        except OSError:
            pass
    report = {"time_s": round(elapsed, 4), "stdout": out[:cap].decode("utf-8", "replace")}
    if status is None:
        report["status"] = "timeout"
    elif len(out) > cap or (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXFSZ):
        report["status"] = "output_limit"
    elif os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        report["status"] = "timeout" if sig == signal.SIGXCPU else "crashed"
        report["error"] = "killed by signal %d" % sig
    elif os.WEXITSTATUS(status) != 0:
        report["status"] = "runtime_error"
        report["error"] = err
    else:
        report["status"] = "ok"
    if "fn_name" in test and report["status"] == "ok":
        try:
            report["value"] = json.loads(ret.decode("utf-8"))["value"]
        except (ValueError, KeyError):
            report["status"] = "runtime_error"
            report["error"] = "no return value recorded"
    return report


def main():
    job = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    _become_init()
    channel = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    try:
        code = compile(job["code"], "<solution>", "exec")
    except (SyntaxError, ValueError) as exc:  # ValueError: NUL bytes in the source
        _write_all(channel, json.dumps({"status": "syntax_error", "error": str(exc)[:ERROR_TAIL]}).encode())
        return
    deadline = time.monotonic() + job["total_s"]
    results, status = [], "ok"
    for index, test in enumerate(job["tests"]):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            status = "time_limit"
            break
        results.append(_run_test(code, test, index, min(test["limit_s"], remaining), test["cap"], channel))
    if time.monotonic() > deadline:
        status = "time_limit"
    _write_all(channel, json.dumps({"status": status, "tests": results}, ensure_ascii=False).encode("utf-8"))


if __name__ == "__main__":
    main()
