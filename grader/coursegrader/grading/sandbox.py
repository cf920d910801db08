"""Start a runner (:mod:`.runner`) in a sandbox and control it from the grader.

Levels, best first (``auto`` picks the best the machine offers; :func:`detect_level`):

``namespaces`` (Linux, as root)
    ``unshare`` gives the runner new PID, mount, network, IPC and UTS namespaces. Inside, a
    fresh root file system is assembled on a tmpfs from read-only bind mounts of the system
    (``/usr``, ``/etc``), the Python installation, the course library and the data mirror only,
    plus a private size-limited ``/tmp``; ``pivot_root`` makes it the root and the host's root is
    unmounted. Then ``setpriv`` drops to a dedicated unprivileged user (one per parallel slot,
    ``coursegrader-sandbox-N``, created with ``useradd`` on first use) with no capabilities and
    ``no_new_privs``. The course folder, the gradebook, other submissions, the instructor
    editions and the chapter sources do not exist in that file system. The network namespace
    has only a loopback device that is down.
``userns`` (Linux, not root, unprivileged user namespaces enabled)
    The same, inside a user namespace: the runner is "root" only inside it (mapped to the
    instructor's own uid outside), so it cannot raise resource limits or reach host files, but
    it runs under the instructor's uid rather than a separate user.
``rlimits`` (any other POSIX system, e.g. macOS)
    A plain subprocess in its own session and temporary directory with resource limits. No
    file-system or network isolation: only for trusted code (self-checks) or a trusted class.

In every level the runner lowers its own resource limits before any student code runs
(address space, CPU time, file size, processes, open files) and disables stdin.
"""

from __future__ import annotations

import ctypes
import json
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

from .protocol import Channel, ChannelError, socket_pair

LEVELS = ("namespaces", "userns", "rlimits")
DEFAULT_USER = "coursegrader-sandbox"
_PR_SET_PDEATHSIG = 1


class SandboxError(RuntimeError):
    """The sandbox could not be started (the message says why and what to do)."""


@dataclass
class Limits:
    """Per-submission limits. Times are seconds, sizes MiB."""

    cell_timeout_s: float = 60.0  # wall clock, per cell
    notebook_timeout_s: float = 900.0  # wall clock, whole notebook (restarts included)
    memory_mb: int = 4096  # address space of each process (RLIMIT_AS)
    cpu_s: int = 900  # CPU time of each process (RLIMIT_CPU)
    file_mb: int = 64  # largest file the code may write (RLIMIT_FSIZE)
    disk_mb: int = 256  # size of the private /tmp (namespaces levels)
    processes: int = 64  # processes + threads of the sandbox user (RLIMIT_NPROC)
    open_files: int = 256  # RLIMIT_NOFILE
    threads: int = 1  # OMP/MKL threads for numerical libraries


@dataclass
class SandboxConfig:
    level: str = "auto"  # auto | namespaces | userns | rlimits
    user: str = DEFAULT_USER  # base name of the per-slot sandbox users (root only)
    limits: Limits = field(default_factory=Limits)
    readable: list[str] = field(default_factory=list)  # extra read-only paths (data sets, models)
    forbidden: list[str] = field(default_factory=list)  # paths that must never be exposed

    def to_dict(self) -> dict:
        return asdict(self)


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Linux: deliver ``sig`` to this process when its parent dies (used in ``preexec_fn``)."""
    libc = _libc()
    if libc is not None and sys.platform.startswith("linux"):
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


@cache
def detect_level() -> str:
    """The best sandbox level available on this machine (probed once per process)."""
    if (
        not sys.platform.startswith("linux")
        or not shutil.which("unshare")
        or not shutil.which("pivot_root")
    ):
        return "rlimits"
    base = [
        "unshare",
        "--fork",
        "--pid",
        "--mount",
        "--net",
        "--ipc",
        "--uts",
        "--propagation",
        "private",
    ]
    if os.geteuid() == 0 and shutil.which("setpriv") and shutil.which("useradd"):
        probe = base
        level = "namespaces"
    else:
        probe = base[:1] + ["--user", "--map-root-user"] + base[1:]
        level = "userns"
    try:
        ok = subprocess.run([*probe, "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return level if ok else "rlimits"


def resolve_level(config: SandboxConfig) -> str:
    if config.level == "auto":
        return detect_level()
    if config.level not in LEVELS:
        raise SandboxError(
            f"unknown sandbox level {config.level!r}; use one of auto, {', '.join(LEVELS)}"
        )
    best = detect_level()
    if LEVELS.index(config.level) < LEVELS.index(best):
        raise SandboxError(f"sandbox level {config.level!r} is not available here (best: {best!r})")
    return config.level


def ensure_user(name: str) -> tuple[int, int]:
    """(uid, gid) of a system user, created with ``useradd`` if missing (root only)."""
    try:
        entry = pwd.getpwnam(name)
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        pass
    nologin = shutil.which("nologin") or "/usr/sbin/nologin"
    proc = subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            nologin,
            "--user-group",
            name,
        ],
        capture_output=True,
        text=True,
    )
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise SandboxError(
            f"could not create the sandbox user {name!r}: {proc.stderr.strip()}"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _package_dirs() -> list[Path]:
    """Folders that hold the course packages (editable installs live outside site-packages)."""
    import coursegrader

    dirs = [Path(coursegrader.__file__).resolve().parent]
    try:
        import llmcourse

        dirs.append(Path(llmcourse.__file__).resolve().parent)
    except ImportError:
        pass
    return dirs


def exposed_paths(config: SandboxConfig) -> list[Path]:
    """Host paths bind-mounted read-only into the sandbox (besides /usr and /etc)."""
    import site
    import sysconfig

    candidates = [Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix)]
    candidates += [Path(p) for p in site.getsitepackages() if p]
    candidates += [
        Path(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib")
    ]
    candidates += _package_dirs()
    mirror = os.environ.get("LLMCOURSE_DATA_MIRROR")
    if mirror:
        candidates.append(Path(mirror))
    candidates += [Path(p) for p in config.readable]
    forbidden = [Path(p).resolve() for p in config.forbidden]
    chosen: list[Path] = []
    for path in candidates:
        path = path.resolve()
        if (
            not path.exists()
            or str(path).startswith(("/usr", "/etc", "/proc", "/dev", "/sys"))
            or path == Path("/")
        ):
            continue
        for bad in forbidden:
            if bad == path or path in bad.parents:  # exposing `path` would expose `bad`
                raise SandboxError(
                    f"refusing to expose {path} to student code: it contains {bad} "
                    "(keep the course folder and chapter sources outside the Python installation)"
                )
        if any(p == path or p in path.parents for p in chosen):
            continue
        chosen = [p for p in chosen if path not in p.parents] + [path]
    return sorted(chosen)


def _mount_script(paths: list[Path], limits: Limits, uid: int | None, gid: int | None) -> str:
    """Shell run as PID 1 of the new namespaces: build the new root, pivot into it, drop privileges."""
    q = shlex.quote
    lines = [
        "set -eu",
        'R="$1"; shift',
        'STUDENT_PATH="$PATH"; PATH="/usr/sbin:/sbin:/usr/bin:/bin"',
        # read-only, no setuid, no devices; in a user namespace a source mounted noexec stays so
        'ro() { mount -o remount,bind,ro,nosuid,nodev "$1" || mount -o remount,bind,ro,nosuid,nodev,noexec "$1"; }',
        'mount -t tmpfs -o mode=755,size=16m,nosuid coursegrader-root "$R"',
        'mkdir -p "$R/usr" "$R/etc" "$R/dev" "$R/proc" "$R/tmp" "$R/.old"',
        'for d in usr etc; do mount --rbind "/$d" "$R/$d"; ro "$R/$d"; done',
        "for l in bin lib lib32 lib64 libx32 sbin; do",
        '  if [ -L "/$l" ]; then ln -s "$(readlink "/$l")" "$R/$l";',
        '  elif [ -d "/$l" ]; then mkdir -p "$R/$l"; mount --rbind "/$l" "$R/$l"; ro "$R/$l"; fi',
        "done",
        # the private /tmp first, so exposed paths that live under the host's /tmp (a clone in
        # /tmp, its virtualenv) are bind-mounted on top of it rather than hidden by it
        f'mount -t tmpfs -o mode=1777,size={int(limits.disk_mb)}m,nosuid,nodev coursegrader-tmp "$R/tmp"',
        'mkdir -p "$R/tmp/work"',
    ]
    for path in paths:
        target = f'"$R"{q(str(path))}'
        lines += [
            f"mkdir -p {target}",
            f"mount --rbind {q(str(path))} {target}",
            f"ro {target}",
        ]
    lines += [
        'for f in null zero full random urandom; do touch "$R/dev/$f"; mount --bind "/dev/$f" "$R/dev/$f"; done',
        'ln -s /proc/self/fd "$R/dev/fd"',
        'mkdir -p "$R/dev/shm"; mount -t tmpfs -o mode=1777,size=64m,nosuid,nodev coursegrader-shm "$R/dev/shm"',
        'mount -t proc proc "$R/proc"',
        'chmod 755 "$R"',
    ]
    if uid is not None:
        lines.append(f'chown {uid}:{gid} "$R/tmp/work"')
    lines += [
        'cd "$R"',
        "pivot_root . .old",
        "umount -l /.old",
        "rmdir /.old",
        "cd /tmp/work",
        # the new root is read-only from now on (its sub-mounts keep their own flags)
        "mount -o remount,ro,bind / 2>/dev/null || true",
        'PATH="$STUDENT_PATH"',
    ]
    if uid is not None:
        drop = f"--reuid={uid} --regid={gid} --clear-groups"
        lines.append(
            f'exec /usr/bin/setpriv {drop} --no-new-privs --inh-caps=-all --bounding-set=-all -- "$@"'
        )
    else:
        lines.append(
            'exec /usr/bin/setpriv --no-new-privs --inh-caps=-all --bounding-set=-all -- "$@"'
        )
    return "\n".join(lines)


def _clean_env(limits: Limits, workdir: str) -> dict[str, str]:
    threads = str(limits.threads)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": "/tmp" if workdir == "/tmp/work" else workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": f"{workdir}/.matplotlib",
        "XDG_CACHE_HOME": f"{workdir}/.cache",
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "LLMCOURSE_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "COURSEGRADER_SANDBOX": "1",
    }
    if os.environ.get("LLMCOURSE_DATA_MIRROR"):
        env["LLMCOURSE_DATA_MIRROR"] = os.environ["LLMCOURSE_DATA_MIRROR"]
    return env


def _sweep_mountpoints() -> None:
    """Remove the empty mount points left by graders that were killed (their pid is gone)."""
    for folder in Path(tempfile.gettempdir()).glob("coursegrader-root-*-*"):
        owner = folder.name.split("-")[2]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            try:
                folder.rmdir()
            except OSError:
                pass


class Sandbox:
    """One running runner: start it, talk to it through :attr:`channel`, interrupt or kill it."""

    def __init__(self, config: SandboxConfig, slot: int = 0) -> None:
        self.config = config
        self.slot = slot
        self.level = resolve_level(config)
        self.process: subprocess.Popen | None = None
        self.channel: Channel | None = None
        self.runner_pid: int | None = None
        self._mountpoint: str | None = None
        self._workdir: str | None = None
        self._stderr = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> dict:
        """Start the runner and wait for its hello; returns the hello message."""
        limits = self.config.limits
        grader_end, runner_end = socket_pair()
        fd = runner_end.fileno()
        self._stderr = tempfile.TemporaryFile()
        runner_limits = {
            "memory_mb": limits.memory_mb,
            "cpu_s": limits.cpu_s,
            "file_mb": limits.file_mb,
            "open_files": limits.open_files,
        }
        python = [sys.executable, "-I", "-m", "coursegrader.grading.runner", str(fd)]
        if self.level == "rlimits":
            self._workdir = tempfile.mkdtemp(prefix="coursegrader-work-")
            runner_limits["processes"] = None
            config = {"limits": runner_limits, "workdir": self._workdir}
            cmd = [*python, json.dumps(config)]
            env = _clean_env(limits, self._workdir)
        else:
            uid = gid = None
            if self.level == "namespaces":
                uid, gid = ensure_user(f"{self.config.user}-{self.slot}")
                runner_limits["processes"] = limits.processes
            else:
                runner_limits["processes"] = None  # shared with the instructor's own processes
            config = {"limits": runner_limits, "workdir": "/tmp/work"}
            _sweep_mountpoints()
            self._mountpoint = tempfile.mkdtemp(prefix=f"coursegrader-root-{os.getpid()}-")
            script = _mount_script(exposed_paths(self.config), limits, uid, gid)
            unshare = [
                "unshare",
                "--fork",
                "--pid",
                "--mount",
                "--net",
                "--ipc",
                "--uts",
                "--kill-child",
                "--propagation",
                "private",
            ]
            if self.level == "userns":
                unshare[1:1] = ["--user", "--map-root-user"]
            cmd = [
                *unshare,
                "/bin/sh",
                "-c",
                script,
                "coursegrader-sandbox",
                self._mountpoint,
                *python,
                json.dumps(config),
            ]
            env = _clean_env(limits, "/tmp/work")
        try:
            self.process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
                pass_fds=(fd,),
                env=env,
                cwd=self._workdir or "/",
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        finally:
            runner_end.close()
        self.channel = Channel(grader_end)
        try:
            hello = self.channel.recv(timeout)
        except ChannelError as exc:
            detail = self.stderr_tail()
            self.kill()
            raise SandboxError(
                f"the sandboxed runner did not start ({exc}): {detail or 'no output'}"
            ) from exc
        if hello.get("op") != "hello":
            self.kill()
            raise SandboxError(f"the runner greeted with {hello.get('op')!r} instead of 'hello'")
        self.runner_pid = self.channel.runner_pid or self.process.pid
        return hello

    def interrupt(self) -> None:
        """Send SIGINT to the runner (it raises KeyboardInterrupt in the running cell)."""
        if self.runner_pid:
            try:
                os.kill(self.runner_pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exit_status(self, wait: float = 2.0) -> int | None:
        """Popen-style return code of the sandbox (negative: killed by that signal)."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """Kill the runner and everything it started; release the mount point."""
        if self.process is not None and self.process.poll() is None:
            # Killing the runner (PID 1 of its namespace) makes the kernel kill every process in the
            # namespace; `unshare` exits once all of them are gone, so waiting for it is waiting for them.
            if self.runner_pid and self.runner_pid != self.process.pid:
                try:
                    os.kill(self.runner_pid, signal.SIGKILL)
                    self.process.wait(timeout=10)
                except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
                    pass
            if self.process.poll() is None:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        if self.channel is not None:
            self.channel.close()
        if self._mountpoint:
            try:
                os.rmdir(self._mountpoint)
            except OSError:
                pass
            self._mountpoint = None
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def stderr_tail(self, limit: int = 2000) -> str:
        if self._stderr is None:
            return ""
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - limit))
            return self._stderr.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""

    def extra_processes(self) -> list[int]:
        """Processes in the sandbox besides the runner (children the student's code left behind)."""
        if self.runner_pid is None or not sys.platform.startswith("linux"):
            return []
        parents: dict[int, int] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as handle:
                    stat = handle.read()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            if fields and fields[0] != b"Z":
                parents[int(entry.name)] = int(fields[1])
        found, frontier = [], [self.runner_pid]
        while frontier:
            parent = frontier.pop()
            kids = [pid for pid, ppid in parents.items() if ppid == parent]
            found += kids
            frontier += kids
        return found

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
