"""The sandboxed child's own program: build the fence, then run the untrusted code in it.

`d3llm.tasks.sandbox` starts `python -I -S -B` (standard library only) and hands it this
module compiled, with `__name__ == "__main__"`; it is never imported by the package, and it
imports nothing from d3llm, since site-packages are out of reach in the child. Its settings
arrive in argv[2] as a Python literal (`sandbox._config`). It runs trusted until it writes
READY to stdout; what follows READY is the untrusted code's doing.

Order of the layers (each one asked for and not set up ends the run with exit status 113, so
the parent raises instead of scoring in a weaker fence; in probe mode they are only reported):

1. `namespaces` (Linux, root): new mount, network and IPC namespaces; System V limits of the
   new IPC namespace set to zero; a new root of its own (a tmpfs holding read-only, nosuid
   binds of the interpreter's sys.path directories and the system library directories, the
   /dev/null, /dev/zero, /dev/urandom devices, and a private tmpfs working directory of
   `disk_mb`), entered with chroot. Nothing else of the host's file system is visible: no
   /proc, no /tmp, no host unix socket, no setuid program.
   `user_namespace` (Linux, not root): an unprivileged user + network + IPC namespace instead.
2. `drop_user`: no supplementary groups, uid and gid 65534, so the capabilities chroot needs
   to be escaped are gone.
3. `no_new_privs` (Linux): PR_SET_NO_NEW_PRIVS, so no execve can gain privileges.
4. rlimits (`limits`), then the audit hook (`hook`): a second layer that gives clear errors,
   not a boundary.

Two modes after READY:

* "program": main.py runs as `__main__`; the parent reads the exit status.
* "calls": main.py runs as a module, then every expression of `calls` is evaluated in its
  namespace and its value written to the results channel (the original stdout; fd 1 is pointed
  at stderr first, so the code's prints cannot mix in) as one JSON line, `{"ok": VALUE}` with
  VALUE made of exact built-in types only (`plain`), or `{"error": TYPE}`; then the line
  `"end"`, and the process exits at once (no atexit handler of the code runs). The expected
  values never enter this process: the parent compares, so nothing the code does here can make
  a wrong value count as right.
"""

import os
import sys

READY = b"\x06"
END = b'"end"\n'
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x08000000, 0x10000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS = 38
LIBRARY_DIRS = ("/lib", "/lib64", "/lib32", "/usr/lib", "/usr/lib64", "/usr/lib32")
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")
# System V IPC limits of the new namespace: no segment, queue or semaphore set can be made.
IPC_ZERO = {"/proc/sys/kernel/shmmax": "0", "/proc/sys/kernel/shmall": "0",
            "/proc/sys/kernel/shmmni": "0", "/proc/sys/kernel/msgmni": "0",
            "/proc/sys/kernel/sem": "0 0 0 0"}


class SetupError(Exception):
    pass


def libc_functions():
    """(func(name) -> C function returning int, get_errno, unsigned long type), via _ctypes:
    importing the ctypes package costs 3 ms of every run."""
    try:
        import _ctypes

        class ulong(_ctypes._SimpleCData):
            _type_ = "L"

        class cint(_ctypes._SimpleCData):
            _type_ = "i"

        class cfunc(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = cint

        class libc:
            _handle = _ctypes.dlopen(None, 0)

        return (lambda name: cfunc((name, libc))), _ctypes.get_errno, ulong
    except (ImportError, AttributeError, TypeError):
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        return (lambda name: getattr(libc, name)), ctypes.get_errno, ctypes.c_ulong


class Kernel:
    """The few system calls the fence needs that the os module lacks."""

    def __init__(self):
        self.func, self.get_errno, self.ulong = libc_functions()

    def check(self, ret, what):
        if ret != 0:
            err = self.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def unshare(self, flags):
        self.check(self.func("unshare")(flags), f"unshare({flags:#x})")

    def mount(self, src, target, fstype, flags, data=None):
        enc = lambda s: None if s is None else s.encode()
        self.check(self.func("mount")(enc(src), enc(target), enc(fstype), self.ulong(flags), enc(data)),
                   f"mount {target}")

    def no_new_privs(self):
        prctl = self.func("prctl")
        self.check(prctl(PR_SET_NO_NEW_PRIVS, self.ulong(1), self.ulong(0), self.ulong(0), self.ulong(0)),
                   "prctl(PR_SET_NO_NEW_PRIVS)")


def expose(kernel, root, path, writable_device=False):
    """Show the host's `path` at the same place under `root`: read-only and nosuid (devices
    keep their device bit), not recursive (mounts below it stay hidden); a symlink is copied."""
    if not os.path.lexists(path) or os.path.lexists(root + path):
        return
    os.makedirs(os.path.dirname(root + path), mode=0o755, exist_ok=True)
    if os.path.islink(path):
        os.symlink(os.readlink(path), root + path)
        return
    if os.path.isdir(path):
        os.mkdir(root + path, 0o755)
    else:
        open(root + path, "wb").close()
    kernel.mount(path, root + path, None, MS_BIND)
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | (0 if writable_device else MS_RDONLY | MS_NODEV)
    kernel.mount(None, root + path, None, flags)


def enter_new_root(kernel, cfg, source):
    """Namespaces, zero System V limits, then chroot into a root that shows only what Python
    needs; returns with the working directory the private tmpfs holding main.py."""
    kernel.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC)
    kernel.mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing propagates back to the host
    for name, value in IPC_ZERO.items():
        with open(name, "w") as f:
            f.write(value)
    root, uid = cfg["workdir"], cfg["uid"]  # an empty host directory, covered here
    kernel.mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    wanted = {os.path.abspath(p) for p in sys.path if p} | set(LIBRARY_DIRS) | {"/etc/ld.so.cache"}
    for path in sorted(wanted, key=len):  # a parent before what lies inside it
        expose(kernel, root, path)
    for device in DEVICES:
        expose(kernel, root, device, writable_device=True)
    os.mkdir(root + "/work", 0o700)
    kernel.mount("tmpfs", root + "/work", "tmpfs", MS_NOSUID | MS_NODEV,
                 f"size={cfg['disk_mb']}m,mode=700,uid={uid},gid={uid}")
    kernel.mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chroot(root)
    os.chdir("/work")
    with open("main.py", "wb") as f:
        f.write(source)


def drop_user(uid):
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    if os.getresuid() != (uid,) * 3 or os.getresgid() != (uid,) * 3:
        raise OSError(f"still uid {os.getresuid()} gid {os.getresgid()}")


def setup(cfg):
    """Build the layers `cfg` asks for; returns (source of main.py, report of failed layers)."""
    report = {}

    def failed(name, err):
        report[name] = str(err)
        if not cfg["probe"]:
            raise SetupError(f"{name}: {err}")

    def layer(name, action, *args):
        try:
            action(*args)
        except (OSError, ImportError, AttributeError, ValueError) as e:
            failed(name, e)

    with open(os.path.join(cfg["workdir"], "main.py"), "rb") as f:
        source = f.read()
    try:
        import resource  # now: after the new root the standard library may be out of reach
    except ImportError as e:
        resource = None
        if cfg["strict_limits"]:
            failed("limits", e)
    kernel = Kernel() if sys.platform == "linux" else None
    if cfg["namespaces"]:
        layer("namespaces", enter_new_root, kernel, cfg, source)
    elif cfg["user_namespace"]:
        layer("user_namespace", kernel.unshare, CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWIPC)
    if cfg["drop_user"]:
        layer("drop_user", drop_user, cfg["uid"])
    if kernel is not None:
        layer("no_new_privs", kernel.no_new_privs)
    for name, value in cfg["limits"] if resource else ():
        try:
            resource.setrlimit(getattr(resource, name), (value, value))
        except (OSError, ValueError, AttributeError) as e:
            if cfg["strict_limits"]:
                failed("limits", f"{name}: {e}")
            report.setdefault("limits_skipped", []).append(name)
    return source, report


def install_guard():
    """The audit hook: clear errors for the common cases. Not a boundary on its own (code can
    find it and switch it off); the layers above are."""
    root = os.path.realpath(os.getcwd())
    blocked_modules = {"socket", "_socket", "ssl", "_ssl", "select", "selectors", "asyncio",
        "subprocess", "multiprocessing", "_posixsubprocess", "ctypes", "_ctypes", "urllib",
        "http", "ftplib", "smtplib", "telnetlib", "pty"}
    blocked_events = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
        "os.forkpty", "os.kill", "os.killpg", "subprocess.Popen", "ctypes.dlopen", "os.chdir",
        "os.setuid", "os.setgid", "resource.setrlimit", "sys.addaudithook"}
    path_events = {"os.remove": 0, "os.rmdir": 0, "os.mkdir": 0, "os.rename": 0,
        "os.replace": 0, "os.truncate": 0, "os.chmod": 0, "os.chown": 0, "os.link": 0,
        "os.symlink": 1, "os.utime": 0, "shutil.rmtree": 0, "shutil.copyfile": 1,
        "shutil.move": 1}
    dir_fd_last = {"os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.symlink",
                   "os.utime", "shutil.rmtree"}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def inside(path, dir_fd=None):
        if isinstance(path, int) or dir_fd not in (None, -1):
            return False  # an fd or a dir_fd could point anywhere
        if isinstance(path, bytes):
            path = path.decode(errors="replace")
        full = os.path.realpath(os.path.join(root, os.fspath(path)))
        return full == root or full.startswith(root + os.sep)

    def guard(event, args):
        if event == "import" and str(args[0]).split(".")[0] in blocked_modules:
            raise PermissionError(f"sandbox: import of {args[0]} is not allowed")
        if event in blocked_events or event.startswith("socket."):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = args
            writing = (mode and any(c in str(mode) for c in "wax+")) or (flags or 0) & write_flags
            if writing and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} is outside the sandbox")
        elif event in path_events:
            if event in ("os.rename", "os.replace", "os.link"):
                if not (inside(args[0], args[2]) and inside(args[1], args[3])):
                    raise PermissionError(f"sandbox: {event} outside the sandbox is not allowed")
            elif event == "os.truncate" and isinstance(args[0], int):
                pass  # ftruncate: the fd was opened for writing, which `open` checked
            elif not inside(args[path_events[event]], args[-1] if event in dir_fd_last else None):
                raise PermissionError(f"sandbox: {event} outside the sandbox is not allowed")

    for name in list(sys.modules):
        if name.split(".")[0] in blocked_modules:
            del sys.modules[name]
    sys.addaudithook(guard)


def make_encoder():
    """`encode(value) -> bytes`: one JSON line for a value made only of exact built-in types
    (None, bool, int, float, str, list, tuple, dict with str keys); anything else, an int or
    list subclass, or an object with its own `__eq__` included, raises TypeError. The names it
    uses are bound now, before the untrusted code could replace them."""
    import json
    dumps, type_, id_, len_, list_ = json.dumps, type, id, len, list
    scalars = (type(None), bool, int, float, str)
    max_depth, max_items = 64, 100_000

    def plain(value, depth, seen):
        kind = type_(value)
        if kind in scalars:
            return value
        if depth >= max_depth or id_(value) in seen:
            raise TypeError("value nested too deeply or recursive")
        seen.add(id_(value))
        if kind is list or kind is tuple:
            if len_(value) > max_items:
                raise TypeError("value too large")
            return [plain(v, depth + 1, seen) for v in list_(value)]
        if kind is dict:
            items = list_(dict.items(value))
            if any(type_(k) is not str for k, _ in items):
                raise TypeError("dict keys must be str")
            return {k: plain(v, depth + 1, seen) for k, v in items}
        raise TypeError(f"a {kind.__name__} is not a plain value")

    def encode(value):
        return dumps({"ok": plain(value, 0, set())}).encode() + b"\n"

    return encode


def run_calls(source, calls):
    """Module code, then each call; one result line per call on the results channel."""
    encode = make_encoder()
    results = os.dup(1)
    os.dup2(2, 1)
    write, exit_, base = os.write, os._exit, BaseException
    write(results, READY)
    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        exec(compile(source, "main.py", "exec"), namespace)
    except base as e:
        write(2, b"the module code failed: " + type(e).__name__.encode(errors="replace") + b"\n")
        exit_(1)
    for call in calls:
        try:
            line = encode(eval(call, namespace))
        except base:  # SystemExit and KeyboardInterrupt included: a failed call
            line = b'{"error": 1}\n'
        write(results, line)
    write(results, END)
    exit_(0)  # at once: no atexit handler or finalizer of the code runs


def main():
    cfg = eval(sys.argv[2], {"__builtins__": {}})
    del sys.argv[1:]
    try:
        source, report = setup(cfg)
    except SetupError as e:
        os.write(2, f"d3llm sandbox setup failed: {e}\n".encode())
        os._exit(113)
    if cfg["probe"]:
        os.write(1, repr(report).encode())
        os._exit(0)
    if cfg["hook"]:
        install_guard()
    if cfg["mode"] == "calls":
        run_calls(source, cfg["calls"])
    os.write(1, READY)
    exec(compile(source, "main.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})


if __name__ == "__main__":
    main()
