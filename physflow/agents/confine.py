"""Kernel-enforced confinement for the sandbox: a seccomp filter, Landlock rules, dropped capabilities.

These are the walls of :mod:`physflow.agents.sandbox`; the kernel file's Python audit hooks are only
a second line (they live in the same interpreter as the code they watch, so code can undo them).

Why the seccomp filter is written here as a BPF program (``struct sock_filter``) rather than
compiled with libseccomp: the rules are a short deny list plus three argument checks, the same
bytes are handed to ``bwrap --seccomp FD`` and loaded by ``prctl(PR_SET_SECCOMP)`` before ``exec``
on machines without namespaces, and HPC compute nodes often lack libseccomp (or ship one whose
ctypes API differs by version) while a BPF program needs nothing but the kernel. The syscall
numbers below are the kernel's stable ABI for x86-64 and AArch64; a test checks them against
libseccomp's tables where libseccomp is installed. Any other architecture gets no filter, and
the sandbox then refuses to start rather than run with less (see ``Sandbox``).

The deny list follows Docker's default profile (the syscalls it leaves out of its allow list),
plus: no new processes at all (``fork``, ``vfork``, ``clone`` without ``CLONE_THREAD``; threads
stay allowed), no ``clone3`` (answered ``ENOSYS`` so that glibc falls back to ``clone``, whose flags
a filter can read), no socket family but ``AF_UNIX``, and no ``TIOCSTI`` / ``TIOCLINUX`` ioctls.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from collections.abc import Iterable, Sequence

# -- seccomp ---------------------------------------------------------------------------------------

#: AUDIT_ARCH_* values (linux/audit.h) and the syscall numbers denied outright, per machine.
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_DENIED_NAMES = (
    # mounts and namespaces: the escape the hostile tester used (remount a read-only bind)
    "mount", "umount2", "pivot_root", "mount_setattr", "move_mount", "open_tree", "fsopen", "fsconfig",
    "fsmount", "fspick", "unshare", "setns", "chroot",
    # other processes' memory, handles and signals through pidfds
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_open", "pidfd_send_signal", "pidfd_getfd",
    # the kernel itself: modules, kexec, BPF, keyrings, perf, reboot, swap, clocks, quotas, accounting
    "kexec_load", "kexec_file_load", "bpf", "keyctl", "add_key", "request_key", "init_module", "finit_module",
    "delete_module", "create_module", "query_module", "get_kernel_syms", "perf_event_open", "userfaultfd",
    "reboot", "swapon", "swapoff", "acct", "clock_adjtime", "clock_settime", "settimeofday", "quotactl",
    "quotactl_fd", "lookup_dcookie", "nfsservctl", "sysfs", "_sysctl", "uselib", "ustat", "ioperm", "iopl",
    "syslog", "vhangup", "sethostname", "setdomainname", "fanotify_init", "move_pages", "migrate_pages",
    # files by handle (the classic container escape) and io_uring (bypasses the filter's view of I/O)
    "open_by_handle_at", "name_to_handle_at", "io_uring_setup", "io_uring_enter", "io_uring_register",
    # no new processes: the analysis needs none, and no fork bomb can start
    "fork", "vfork", "tkill",
)
_SYSCALLS = {
    "x86_64": {
        "mount": 165, "umount2": 166, "pivot_root": 155, "mount_setattr": 442, "move_mount": 429, "open_tree": 428,
        "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "unshare": 272, "setns": 308, "chroot": 161,
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "pidfd_open": 434,
        "pidfd_send_signal": 424, "pidfd_getfd": 438, "kexec_load": 246, "kexec_file_load": 320, "bpf": 321,
        "keyctl": 250, "add_key": 248, "request_key": 249, "init_module": 175, "finit_module": 313,
        "delete_module": 176, "create_module": 174, "query_module": 178, "get_kernel_syms": 177,
        "perf_event_open": 298, "userfaultfd": 323, "reboot": 169, "swapon": 167, "swapoff": 168, "acct": 163,
        "clock_adjtime": 305, "clock_settime": 227, "settimeofday": 164, "quotactl": 179, "quotactl_fd": 443,
        "lookup_dcookie": 212, "nfsservctl": 180, "sysfs": 139, "_sysctl": 156, "uselib": 134, "ustat": 136,
        "ioperm": 173, "iopl": 172, "syslog": 103, "vhangup": 153, "sethostname": 170, "setdomainname": 171,
        "fanotify_init": 300, "move_pages": 279, "migrate_pages": 256, "open_by_handle_at": 304,
        "name_to_handle_at": 303, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "fork": 57, "vfork": 58, "tkill": 200,
        # checked by argument, not denied outright
        "clone": 56, "clone3": 435, "socket": 41, "socketpair": 53, "personality": 135, "ioctl": 16,
        "kill": 62, "tgkill": 234, "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297,
    },
    "aarch64": {
        "mount": 40, "umount2": 39, "pivot_root": 41, "mount_setattr": 442, "move_mount": 429, "open_tree": 428,
        "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "unshare": 97, "setns": 268, "chroot": 51,
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272, "pidfd_open": 434,
        "pidfd_send_signal": 424, "pidfd_getfd": 438, "kexec_load": 104, "kexec_file_load": 294, "bpf": 280,
        "keyctl": 219, "add_key": 217, "request_key": 218, "init_module": 105, "finit_module": 273,
        "delete_module": 106, "perf_event_open": 241, "userfaultfd": 282, "reboot": 142, "swapon": 224,
        "swapoff": 225, "acct": 89, "clock_adjtime": 266, "clock_settime": 112, "settimeofday": 170,
        "quotactl": 60, "quotactl_fd": 443, "lookup_dcookie": 18, "nfsservctl": 42, "syslog": 116, "vhangup": 58,
        "sethostname": 161, "setdomainname": 162, "fanotify_init": 262, "move_pages": 239, "migrate_pages": 238,
        "open_by_handle_at": 265, "name_to_handle_at": 264, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "tkill": 130,
        "clone": 220, "clone3": 435, "socket": 198, "socketpair": 199, "personality": 92, "ioctl": 29,
        "kill": 129, "tgkill": 131, "rt_sigqueueinfo": 138, "rt_tgsigqueueinfo": 240,
    },
}
_RET_ALLOW = 0x7FFF0000
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_CLONE_THREAD = 0x00010000
#: CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET (CLONE_NEWTIME only via clone3)
_CLONE_NAMESPACES = 0x7E020000
_AF_UNIX = 1
_TIOCSTI, _TIOCLINUX = 0x5412, 0x541C
#: personality(2) values Docker allows: PER_LINUX, UNAME26, PER_LINUX32 (+UNAME26), and the query.
_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
_X32_SYSCALL_BIT = 0x40000000


class Unavailable(OSError):
    """This machine cannot give the confinement asked for (architecture, kernel, permissions)."""


def seccomp_arch() -> str | None:
    """The machine name the filter knows (``x86_64``, ``aarch64``), or None."""
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    return machine if machine in _SYSCALLS else None


class _Asm:
    """A tiny classic-BPF assembler with forward labels (jump offsets are 8 bits)."""

    def __init__(self) -> None:
        self.code: list[tuple[int, object, object, int]] = []
        self.labels: dict[str, int] = {}

    def load_nr(self) -> None:
        self.code.append((0x20, 0, 0, 0))  # BPF_LD|BPF_W|BPF_ABS seccomp_data.nr

    def load_arch(self) -> None:
        self.code.append((0x20, 0, 0, 4))

    def load_arg(self, i: int) -> None:
        self.code.append((0x20, 0, 0, 16 + 8 * i))  # low 32 bits (little-endian machines only)

    def jeq(self, k: int, jt: object = 0, jf: object = 0) -> None:
        self.code.append((0x15, jt, jf, k & 0xFFFFFFFF))

    def jge(self, k: int, jt: object = 0, jf: object = 0) -> None:
        self.code.append((0x35, jt, jf, k & 0xFFFFFFFF))

    def jset(self, k: int, jt: object = 0, jf: object = 0) -> None:
        self.code.append((0x45, jt, jf, k & 0xFFFFFFFF))

    def ret(self, k: int) -> None:
        self.code.append((0x06, 0, 0, k))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def assemble(self) -> bytes:
        out = b""
        for i, (op, jt, jf, k) in enumerate(self.code):
            offs = [self.labels[j] - i - 1 if isinstance(j, str) else j for j in (jt, jf)]
            if not all(0 <= o < 256 for o in offs):
                raise ValueError(f"BPF jump out of range at {i}")
            out += struct.pack("=HBBI", op, offs[0], offs[1], k)
        return out


def seccomp_filter(own_pid: int | None = None, arch: str | None = None) -> bytes:
    """The filter as raw ``struct sock_filter`` bytes (8 bytes an instruction).

    ``own_pid``: where no PID namespace hides other processes, the only process the code may
    signal (``kill``/``tgkill``/``rt_*sigqueueinfo`` to any other pid -> EPERM); None leaves
    signals to the namespace. Raises :class:`Unavailable` on an architecture it does not know.
    """
    arch = arch or seccomp_arch()
    if arch not in _SYSCALLS:
        raise Unavailable(f"no seccomp filter for the {platform.machine()} architecture")
    nr = _SYSCALLS[arch]
    eperm = _RET_ERRNO | errno.EPERM
    a = _Asm()
    a.load_arch()
    a.jeq(_AUDIT_ARCH[arch], jt=1)
    a.ret(_RET_KILL_PROCESS)  # another ABI (i386 on x86-64) has other numbers: never let it in
    a.load_nr()
    if arch == "x86_64":
        a.jge(_X32_SYSCALL_BIT, jt="deny")
    for name in _DENIED_NAMES:
        if name in nr:
            a.jeq(nr[name], jt="deny")
    a.jeq(nr["clone3"], jt=0, jf=1)
    a.ret(_RET_ERRNO | errno.ENOSYS)
    # clone: threads only, and no namespace flags
    a.jeq(nr["clone"], jf="clone_end")
    a.load_arg(0)
    a.jset(_CLONE_NAMESPACES, jt="deny")
    a.jset(_CLONE_THREAD, jt="allow", jf="deny")
    a.label("clone_end")
    for call in ("socket", "socketpair"):
        a.jeq(nr[call], jf=f"{call}_end")
        a.load_arg(0)
        a.jeq(_AF_UNIX, jt="allow")
        a.ret(_RET_ERRNO | errno.EAFNOSUPPORT)
        a.label(f"{call}_end")
    a.jeq(nr["personality"], jf="personality_end")
    a.load_arg(0)
    for value in _PERSONALITIES:
        a.jeq(value, jt="allow")
    a.ret(eperm)
    a.label("personality_end")
    a.jeq(nr["ioctl"], jf="ioctl_end")
    a.load_arg(1)
    a.jeq(_TIOCSTI, jt="deny")
    a.jeq(_TIOCLINUX, jt="deny")
    a.ret(_RET_ALLOW)
    a.label("ioctl_end")
    if own_pid is not None:
        for call, allowed in (("kill", (0, own_pid, -own_pid)), ("tgkill", (own_pid,)),
                              ("rt_sigqueueinfo", (own_pid,)), ("rt_tgsigqueueinfo", (own_pid,))):
            a.jeq(nr[call], jf=f"{call}_end")
            a.load_arg(0)
            for pid in allowed:
                a.jeq(pid, jt="allow")
            a.ret(eperm)
            a.label(f"{call}_end")
    a.label("allow")
    a.ret(_RET_ALLOW)
    a.label("deny")
    a.ret(eperm)
    return a.assemble()


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _check(rc: int, what: str) -> None:
    if rc < 0:
        err = ctypes.get_errno()
        raise Unavailable(err, f"{what}: {os.strerror(err)}")


def set_no_new_privs() -> None:
    """No ``exec`` of this process or its children may gain privileges (setuid bits, file caps)."""
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def apply_seccomp(program: bytes) -> None:
    """Set no_new_privs and load ``program`` into this process (kept across ``exec``)."""
    set_no_new_privs()
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    _check(_libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0), "seccomp")


def drop_capabilities() -> None:
    """Empty the bounding and ambient sets, so that not even root's ``exec`` gains a capability
    (the process keeps its uid: on machines where the interpreter lives in root's home, an
    unprivileged uid could not even start it)."""
    last = int(open("/proc/sys/kernel/cap_last_cap").read()) if os.path.exists(
        "/proc/sys/kernel/cap_last_cap") else 40
    for cap in range(last + 1):
        if _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 and ctypes.get_errno() not in (errno.EINVAL,):
            _check(-1, f"prctl(PR_CAPBSET_DROP, {cap})")
    _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)


# -- Landlock ----------------------------------------------------------------------------------------

_SYS_LANDLOCK = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH, _LANDLOCK_RULE_NET_PORT = 1, 2
#: access rights per ABI version (linux/landlock.h): bit i of the fs mask, and when it appeared
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_ALL_V1 = (1 << 13) - 1
_FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_NET_ALL = 0b11  # BIND_TCP | CONNECT_TCP (ABI 4)
_SCOPE_ALL = 0b11  # ABSTRACT_UNIX_SOCKET | SIGNAL (ABI 6)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where Landlock is missing or disabled."""
    arch = seccomp_arch()
    if arch is None:
        return 0
    rc = _libc.syscall(_SYS_LANDLOCK[arch][0], None, ctypes.c_size_t(0), ctypes.c_uint32(
        _LANDLOCK_CREATE_RULESET_VERSION))
    return max(int(rc), 0)


def apply_landlock(read: Iterable[str], write: Sequence[str]) -> int:
    """Restrict this process (and what it ``exec``s) to reading and executing under ``read``
    and reading/writing under ``write``; no TCP bind/connect (ABI >= 4), no signals to or
    abstract sockets of processes outside (ABI >= 6). Returns the ABI used; needs no_new_privs
    (``apply_seccomp`` sets it) or CAP_SYS_ADMIN. Raises :class:`Unavailable`."""
    abi = landlock_abi()
    if abi < 1:
        raise Unavailable("Landlock is not available in this kernel")
    arch = seccomp_arch()
    assert arch is not None
    create, add, restrict = _SYS_LANDLOCK[arch]
    fs = _FS_ALL_V1 | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0) | (
        _FS_IOCTL_DEV if abi >= 5 else 0)
    attr = _RulesetAttr(fs, _NET_ALL if abi >= 4 else 0, _SCOPE_ALL if abi >= 6 else 0)
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = _libc.syscall(create, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    _check(ruleset, "landlock_create_ruleset")
    reading = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
    try:
        for paths, access in ((read, reading), (write, fs)):
            for path in paths:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue  # a folder this machine does not have (/lib64 on AArch64)
                try:
                    # a file takes only file rights; a folder the rights of everything beneath it
                    allowed = access if os.path.isdir(path) else access & (
                        _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV)
                    rule = _PathBeneath(allowed, fd)
                    _check(_libc.syscall(add, ctypes.c_int(ruleset), ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH),
                                         ctypes.byref(rule), ctypes.c_uint32(0)), f"landlock_add_rule({path})")
                finally:
                    os.close(fd)
        _check(_libc.syscall(restrict, ctypes.c_int(ruleset), ctypes.c_uint32(0)), "landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi
