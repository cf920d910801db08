"""What the sandbox guarantees on this machine, checked from inside it with student-like code."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest

from coursegrader.grading.protocol import ChannelTimeout, ForgedMessage
from coursegrader.grading.sandbox import (
    DEFAULT_USER,
    Limits,
    Sandbox,
    SandboxConfig,
    detect_level,
    exposed_paths,
)

from .helpers import FAST, FIXTURES

SECRET = "SECRET-SANDBOX-HIDDEN-TEST"


def run(sandbox: Sandbox, code: str, kind: str = "solution", seq: int = 1) -> dict:
    """Execute ``code`` as a student cell; return the runner's result message."""
    sandbox.channel.send(
        {
            "op": "exec",
            "seq": seq,
            "kind": kind,
            "parts": [["code", f"<{kind} probe>", code]],
            "check": False,
        }
    )
    while True:
        reply = sandbox.channel.recv(60)
        if reply["op"] == "result":
            return reply


def probe(sandbox: Sandbox, code: str) -> object:
    """Run ``code`` that assigns ``out``; return ``out`` (travels as JSON through stdout)."""
    reply = run(sandbox, code + "\nimport json as _j\nprint('OUT=' + _j.dumps(out))")
    assert reply["status"] == "ok", reply["error"]
    line = next(x for x in reply["stdout"].splitlines() if x.startswith("OUT="))
    return json.loads(line[4:])


@pytest.fixture
def protected(tmp_path: Path) -> dict:
    """Files the sandbox must not see: a course folder with a gradebook, submissions, hidden tests."""
    course = tmp_path / "course"
    (course / "submitted" / "bob").mkdir(parents=True)
    (course / "submitted" / "bob" / "00.ipynb").write_text("bob's work")
    (course / "source").mkdir()
    (course / "source" / "00.ipynb").write_text(SECRET)
    (course / "gradebook.db").write_text("grades")
    return {"course": course}


@pytest.fixture
def sandbox(protected: dict):
    config = SandboxConfig(limits=Limits(**FAST), forbidden=[str(protected["course"])])
    box = Sandbox(config, slot=0)
    box.start()
    yield box
    box.kill()


def test_isolating_level_is_available_here() -> None:
    level = detect_level()
    assert level in ("namespaces", "userns"), (
        f"only the {level!r} sandbox is available: student code would not be isolated on this machine "
        "(needs Linux with `unshare` and `pivot_root`; as root also `setpriv` and `useradd`)"
    )


def test_runs_as_unprivileged_sandbox_user(sandbox: Sandbox) -> None:
    info = probe(
        sandbox, "import os\nout = [os.getuid(), os.getgid(), os.getgroups(), os.getpid()]"
    )
    uid, gid, groups, pid = info
    assert pid == 1  # its own PID namespace
    if sandbox.level == "namespaces":
        assert uid == pwd.getpwnam(f"{DEFAULT_USER}-0").pw_uid != 0
        assert groups in ([], [gid])
    else:
        assert os.geteuid() != 0 or uid == 0  # userns: "root" only inside its user namespace


def test_cannot_see_course_submissions_gradebook_or_sources(
    sandbox: Sandbox, protected: dict, root: Path
) -> None:
    paths = [
        protected["course"],
        protected["course"] / "source" / "00.ipynb",
        protected["course"] / "gradebook.db",
        protected["course"] / "submitted" / "bob" / "00.ipynb",
        root / "solutions",
        FIXTURES,
        root / ".git",
        root / "_build",
        Path("/root/.ssh"),
        Path("/home"),
    ]
    out = probe(
        sandbox, f"import os\nout = [os.path.exists(p) for p in {[str(p) for p in paths]!r}]"
    )
    assert out == [False] * len(paths)
    top = probe(sandbox, "import os\nout = sorted(os.listdir('/'))")
    system = {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp", "usr"}
    # the first folder of each exposed path (the clone, its virtualenv, Python) appears too,
    # wherever the clone lives (/work, /check, /tmp, ...)
    exposed = {path.parts[1] for path in exposed_paths(sandbox.config) if len(path.parts) > 1}
    assert set(top) <= system | exposed, (
        f"unexpected top-level folders: {set(top) - system - exposed}"
    )
    assert "home" not in top or "home" in exposed
    repo = probe(sandbox, f"import os\nout = sorted(os.listdir({str(root)!r}))")
    assert set(repo) <= {"lib", "grader", ".venv"}


def test_system_and_python_are_read_only(sandbox: Sandbox) -> None:
    import sys

    site = next(p for p in sys.path if p.endswith("site-packages"))
    out = probe(
        sandbox,
        f"""
import errno
out = []
for p in ['/usr/evil', '/etc/evil', {site!r} + '/evil.pth']:
    try:
        open(p, 'w')
        out.append('written')
    except OSError as e:
        out.append(errno.errorcode[e.errno])
""",
    )
    assert all(code in ("EROFS", "EACCES") for code in out), out


def test_hidden_tests_never_touch_the_file_system(sandbox: Sandbox) -> None:
    reply = run(sandbox, f"assert 1 == 1, {SECRET!r}", kind="test")
    assert reply["status"] == "ok"
    found = probe(
        sandbox,
        f"""
import os
out = []
for top in ['/tmp', '/proc/1', '/dev/shm', os.getcwd()]:
    for folder, dirs, files in os.walk(top):
        if folder.startswith('/proc/1/task') or '/proc/1/' in folder and folder.count('/') > 3:
            continue
        for name in files:
            path = os.path.join(folder, name)
            try:
                with open(path, 'rb') as handle:
                    if {SECRET!r}.encode() in handle.read(1 << 20):
                        out.append(path)
            except OSError:
                pass
""",
    )
    assert found == []


def test_no_network(sandbox: Sandbox) -> None:
    out = probe(
        sandbox,
        """
import socket
out = []
for target in [("1.1.1.1", 80), ("127.0.0.1", 22)]:
    try:
        socket.create_connection(target, timeout=2)
        out.append("connected")
    except OSError as exc:
        out.append(type(exc).__name__)
try:
    socket.getaddrinfo("example.com", 80)
    out.append("resolved")
except OSError as exc:
    out.append(type(exc).__name__)
""",
    )
    assert "connected" not in out and "resolved" not in out


def test_other_processes_are_invisible(sandbox: Sandbox) -> None:
    out = probe(
        sandbox,
        f"""
import os
out = [sorted(p for p in os.listdir('/proc') if p.isdigit())]
try:
    os.kill({os.getpid()}, 0)
    out.append('grader visible')
except ProcessLookupError:
    out.append('no such process')
""",
    )
    assert out == [["1"], "no such process"]


def test_resource_limits_hold_and_cannot_be_raised(sandbox: Sandbox) -> None:
    out = probe(
        sandbox,
        """
import errno, os, resource
out = {}
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
out['as_mb'] = hard // 2**20
try:
    resource.setrlimit(resource.RLIMIT_AS, (hard * 2, hard * 2))
    out['raise'] = 'raised'
except (ValueError, OSError):
    out['raise'] = 'refused'
try:
    big = bytearray(4 * 2**30)
    out['memory'] = 'allocated'
except MemoryError:
    out['memory'] = 'MemoryError'
try:
    with open('big.bin', 'wb') as handle:
        handle.write(b'x' * (20 * 2**20))
    out['file'] = 'written'
except OSError as exc:
    out['file'] = errno.errorcode[exc.errno]
os.remove('big.bin')
st = os.statvfs('/tmp')
out['tmp_mb'] = st.f_blocks * st.f_frsize // 2**20
""",
    )
    assert out["as_mb"] == FAST["memory_mb"]
    assert out["raise"] == "refused"
    assert out["memory"] == "MemoryError"
    assert out["file"] == "EFBIG"
    assert out["tmp_mb"] <= FAST["disk_mb"]


def test_process_count_is_limited(sandbox: Sandbox) -> None:
    if sandbox.level != "namespaces":
        pytest.fail(
            "process limits per sandbox need the root 'namespaces' level (a dedicated user per slot)"
        )
    out = probe(
        sandbox,
        """
import os, time
out = 0
children = []
try:
    for _ in range(500):
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children.append(pid)
except OSError:
    pass
out = len(children)
for pid in children:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
""",
    )
    assert 0 < out < FAST["processes"]


def test_stdin_is_disabled(sandbox: Sandbox) -> None:
    reply = run(sandbox, "input('your name? ')")
    assert reply["error"]["type"] == "StdinDisabledError"
    assert "input() and sys.stdin are disabled" in reply["error"]["message"]
    reply = run(sandbox, "import sys\nsys.stdin.readline()")
    assert reply["error"]["type"] == "StdinDisabledError"
    assert probe(sandbox, "import os\nout = os.read(0, 10).decode()") == ""


def test_killing_the_sandbox_kills_every_process_in_it(sandbox: Sandbox) -> None:
    run(
        sandbox,
        "import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n        os.setsid()\n"
        "        time.sleep(60)\n        os._exit(0)",
    )
    children = sandbox.extra_processes()
    assert len(children) == 3
    sandbox.kill()
    for pid in children:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
        )


FORGER = """
import os, socket, time
fds = [int(name) for name in os.listdir("/proc/self/fd")]  # any number: the suite opens many
pid = os.fork()
if pid == 0:
    # write a well-formed frame to every socket this process holds, without ever blocking
    for attempt in range(50):
        sent = False
        for fd in fds:
            try:
                sock = socket.socket(fileno=fd)
            except OSError:
                continue
            try:
                sock.send(b'\\x01{"6f70": "706f6e67"}', socket.MSG_DONTWAIT)
                sent = True
            except OSError:
                pass
            finally:
                sock.detach()
        if sent:
            break
        time.sleep(0.05)
    os._exit(0)
deadline = time.monotonic() + 10  # the forgery is sent before the reply
while os.waitpid(pid, os.WNOHANG) == (0, 0):
    if time.monotonic() > deadline:
        os.kill(pid, 9)
        print("the forging child was stuck and was killed")
        break
    time.sleep(0.01)
"""


def _process_report(sandbox: Sandbox) -> str:
    """State and kernel wait channel of every process in the sandbox (for failure messages)."""
    lines = []
    for pid in [sandbox.runner_pid, *sandbox.extra_processes()]:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
            wchan = Path(f"/proc/{pid}/wchan").read_text()
        except (OSError, IndexError, TypeError):
            state, wchan = "gone", ""
        lines.append(f"pid {pid}: state {state}, waiting in {wchan or '-'}")
    return "; ".join(lines)


def test_messages_from_other_processes_are_rejected(sandbox: Sandbox) -> None:
    sandbox.channel.send(
        {
            "op": "exec",
            "seq": 5,
            "kind": "solution",
            "check": False,
            "parts": [["code", "<solution forge>", FORGER]],
        }
    )
    replies = []
    with pytest.raises(ForgedMessage, match="not from the runner"):
        while True:
            try:
                replies.append(sandbox.channel.recv(30))
            except ChannelTimeout:
                pytest.fail(f"no message at all in 30 s; {_process_report(sandbox)}")
            assert replies[-1]["op"] != "result", f"the forged frame was not seen: {replies}"


def test_each_parallel_slot_has_its_own_user(protected: dict) -> None:
    if detect_level() != "namespaces":
        pytest.fail("per-slot users need the root 'namespaces' level")
    config = SandboxConfig(limits=Limits(**FAST), forbidden=[str(protected["course"])])
    boxes = [Sandbox(config, slot=s) for s in (0, 1)]
    try:
        uids = [b.start() and probe(b, "import os\nout = os.getuid()") for b in boxes]
    finally:
        for box in boxes:
            box.kill()
    assert uids[0] != uids[1]


def test_refuses_to_expose_a_folder_holding_the_course(tmp_path: Path) -> None:
    from coursegrader.grading.sandbox import SandboxError, exposed_paths

    config = SandboxConfig(readable=[str(tmp_path)], forbidden=[str(tmp_path / "course")])
    with pytest.raises(SandboxError, match="refusing to expose"):
        exposed_paths(config)
