"""Linux confinement primitives through ctypes: prctl, unshare, a seccomp filter and Landlock.

They back the sandbox's fallback mode (no bubblewrap), where they are applied in the child
between fork and exec; what they need (the seccomp program, the Landlock rule list) is built in
the parent so the child only makes system calls. All of them work without privileges:
seccomp needs only no_new_privs, Landlock (Linux >= 5.13) likewise.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from dataclasses import dataclass
from functools import lru_cache

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def prctl(option: int, arg2: int = 0) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg2), 0, 0, 0), f"prctl({option})")


def set_parent_death_signal(signum: int) -> None:
    prctl(PR_SET_PDEATHSIG, signum)


def set_child_subreaper() -> None:
    """Orphaned descendants re-parent to this process instead of PID 1, so it can reap them."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def map_own_ids(uid: int, gid: int) -> None:
    """In a fresh user namespace: map the caller's uid and gid to themselves (unmapped ids
    cannot own files, so nothing could be created)."""
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 2, 4, 1 << 14, 1 << 18


def mount_private_tmpfs(target: str, size_bytes: int, uid: int | None) -> None:
    """In a new mount namespace: stop mount propagation to the host, then mount a size-capped
    tmpfs on ``target``, owned by ``uid`` (None: the caller), that vanishes with the namespace."""
    _check(_libc.mount(None, b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None), "mount --make-rprivate /")
    owner = f",uid={uid},gid={uid}" if uid is not None else ""
    options = f"size={size_bytes},mode=0700{owner}".encode()
    _check(_libc.mount(b"tmpfs", os.fsencode(target), b"tmpfs", ctypes.c_ulong(MS_NOSUID | MS_NODEV), options),
           f"mount tmpfs on {target}")


# --- seccomp: deny network sockets, cross-process memory access, CPU re-pinning ---------------

# (AUDIT_ARCH, syscall numbers). Denied: socket (every family: no network, no host abstract
# unix sockets), io_uring_setup (io_uring can open sockets too), ptrace and process_vm_* (reading
# another process's memory), sched_setaffinity (the sandbox is pinned to one CPU and must stay).
# socketpair stays: it reaches nothing outside the process tree.
_SECCOMP_ARCH = {
    "x86_64": (0xC000003E, {"socket": 41, "io_uring_setup": 425, "ptrace": 101, "process_vm_readv": 310,
                            "process_vm_writev": 311, "sched_setaffinity": 203}),
    "aarch64": (0xC00000B7, {"socket": 198, "io_uring_setup": 425, "ptrace": 117, "process_vm_readv": 270,
                             "process_vm_writev": 271, "sched_setaffinity": 122}),
}
_X32_SYSCALL_BIT = 0x40000000
_RET_KILL_PROCESS, _RET_ALLOW, _RET_ERRNO = 0x80000000, 0x7FFF0000, 0x00050000
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


@lru_cache(maxsize=1)
def seccomp_supported() -> bool:
    if platform.machine() not in _SECCOMP_ARCH:
        return False
    try:
        with open("/proc/self/status") as f:
            return "Seccomp:" in f.read()
    except OSError:
        return False


def build_seccomp_filter() -> bytes:
    """A BPF program: foreign ABIs (i386, x32) are killed, the denied calls fail with EPERM,
    everything else is allowed."""
    arch, numbers = _SECCOMP_ARCH[platform.machine()]
    denied = list(numbers.values())
    insns = [(_LD_W_ABS, 0, 0, 4), (_JEQ_K, 1, 0, arch), (_RET_K, 0, 0, _RET_KILL_PROCESS),
             (_LD_W_ABS, 0, 0, 0)]
    if arch == 0xC000003E:
        insns += [(_JGE_K, 0, 1, _X32_SYSCALL_BIT), (_RET_K, 0, 0, _RET_KILL_PROCESS)]
    for i, nr in enumerate(denied):
        insns.append((_JEQ_K, len(denied) - i, 0, nr))  # jump over the rest and ALLOW
    insns += [(_RET_K, 0, 0, _RET_ALLOW), (_RET_K, 0, 0, _RET_ERRNO | 1)]  # errno 1: EPERM
    return b"".join(struct.pack("HBBI", *insn) for insn in insns)


def install_seccomp(program: bytes) -> None:
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    _check(_libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER),
                       ctypes.c_void_p(ctypes.addressof(prog)), 0, 0), "seccomp")


# --- Landlock: filesystem, TCP and signal confinement ----------------------------------------

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_RULE_PATH_BENEATH = 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 14, 1 << 15
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1
READ_ONLY = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR


@lru_cache(maxsize=1)
def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is absent or disabled."""
    if platform.system() != "Linux":
        return 0
    ret = _libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(ret), 0)


def _handled_fs(abi: int) -> int:
    mask = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2:
        mask |= 1 << 13  # REFER
    if abi >= 3:
        mask |= _FS_TRUNCATE
    if abi >= 5:
        mask |= _FS_IOCTL_DEV
    return mask


def _file_rights(abi: int, write: bool) -> int:
    rights = FS_READ_FILE | (FS_WRITE_FILE if write else 0)
    if write and abi >= 3:
        rights |= _FS_TRUNCATE
    if abi >= 5:
        rights |= _FS_IOCTL_DEV
    return rights


@dataclass(frozen=True)
class LandlockPolicy:
    """Read-only (and executable) trees, one writable tree, a few device files; with ABI >= 4 no
    TCP bind/connect, with ABI >= 6 no signals to processes outside the sandbox and no connects
    to abstract unix sockets outside it. Everything else on the filesystem is denied."""

    read_only: tuple[str, ...]
    writable: str
    read_files: tuple[str, ...] = ("/dev/urandom", "/dev/zero", "/etc/ld.so.cache")
    rw_files: tuple[str, ...] = ("/dev/null",)

    def apply(self, abi: int) -> None:
        handled = _handled_fs(abi)
        attr = [handled]
        if abi >= 4:
            attr.append(_NET_BIND_TCP | _NET_CONNECT_TCP)
        if abi >= 6:
            attr.append(_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL)
        raw = struct.pack(f"{len(attr)}Q", *attr)
        ruleset = _check(_libc.syscall(_SYS_CREATE_RULESET, raw, ctypes.c_size_t(len(raw)), ctypes.c_uint32(0)),
                         "landlock_create_ruleset")
        try:
            rules = [(p, READ_ONLY) for p in self.read_only] + [(self.writable, handled)]
            rules += [(p, _file_rights(abi, False)) for p in self.read_files]
            rules += [(p, _file_rights(abi, True)) for p in self.rw_files]
            for path, rights in rules:
                self._add(ruleset, path, rights)
            prctl(PR_SET_NO_NEW_PRIVS, 1)
            _check(_libc.syscall(_SYS_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)), "landlock_restrict_self")
        finally:
            os.close(ruleset)

    @staticmethod
    def _add(ruleset: int, path: str, rights: int) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            attr = struct.pack("=Qi", rights, fd)  # struct landlock_path_beneath_attr is packed
            _check(_libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, attr, ctypes.c_uint32(0)),
                   f"landlock_add_rule({path})")
        finally:
            os.close(fd)
