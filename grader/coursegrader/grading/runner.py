"""The program that runs inside the sandbox and executes one submission's cells.

It is started by :mod:`.sandbox` as ``python -I -m coursegrader.grading.runner FD CONFIG`` and
talks to the grader over the Unix socket ``FD`` (see :mod:`.protocol`). Cell code, hidden tests
included, arrives over that socket only; nothing of it is ever written to a file.

Student code runs in this very process, so everything the runner relies on after the first
student cell is captured beforehand, as C-implemented callables that no Python-level monkeypatch
can reach: the socket's own methods, ``marshal.loads`` for commands, ``exec``/``compile``, and a
small JSON encoder (:func:`_make_encoder`) whose helpers are bound as default arguments. What the
runner checks ("integrity") and reports:

* an identity snapshot of guarded modules (NumPy, PyTorch, builtins, the course library, ...):
  every module attribute, class attribute and function ``__code__``/``__defaults__``, compared
  before and after each test cell; ``sys.gettrace``/``sys.getprofile`` must stay unset;
* which global names each cell (re)bound, so the grader can tell who defined a test's helpers;
* audit events (PEP 578 hooks cannot be removed) during student code: changing a course
  function's code, tracing, garbage-collector walks, ctypes, sockets, subprocesses, forks.

A determined student who reverse-engineers this file can still lie from inside the process
(e.g. rewrite frame locals through ctypes); such routes raise the audit events above, which the
grader reports for review. The instructor's guide states this limit.
"""

from __future__ import annotations

import builtins
import functools
import json
import marshal
import os
import resource
import signal
import sys
import types

# A private copy of the builtins for every function below: a student who rebinds builtins.len or
# builtins.type changes their own namespace, not the runner's (functions capture their builtins
# when they are created, Python >= 3.10).
__builtins__ = dict(builtins.__dict__)

_PARTIAL = functools.partial

STDIN_MESSAGE = (
    "input() and sys.stdin are disabled while grading: the tests cannot type answers. "
    "Remove the input() call (pass values as function arguments instead)."
)

#: audit events reported for review when they happen in student code (no penalty by themselves)
REVIEW_EVENTS = frozenset(
    {
        "sys.settrace",
        "sys.setprofile",
        "sys._current_frames",
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
        "ctypes.dlopen",
        "ctypes.dlsym",
        "ctypes.addressof",
        "ctypes.cdata",
        "ctypes.string_at",
        "ctypes.PyObj_FromPtr",
        "socket.__new__",
        "os.fork",
        "os.forkpty",
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.kill",
        "os.killpg",
        "subprocess.Popen",
        "sys.addaudithook",
    }
)
#: function attributes whose change on a course function means tampering
CODE_ATTRS = frozenset({"__code__", "__defaults__", "__kwdefaults__"})
STUDENT_FILE_PREFIXES = ("<solution ", "<student ")
COURSE_FILE_PREFIXES = ("<cell ", "<test ", "<hidden ")


class StdinDisabledError(RuntimeError):
    """Raised by ``input()`` and ``sys.stdin`` reads during grading and self-checks."""


class _NoStdin:
    """Replacement for ``sys.stdin``: every read raises :class:`StdinDisabledError`."""

    def read(self, *args: object) -> str:
        raise StdinDisabledError(STDIN_MESSAGE)

    readline = read
    readlines = read
    __iter__ = read
    __next__ = read

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return 0


def _no_input(prompt: object = "") -> str:
    raise StdinDisabledError(STDIN_MESSAGE)


class _Capture:
    """A ``sys.stdout`` that keeps the first ``limit`` characters of each cell's output."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0

    def write(self, text: str) -> int:
        text = str(text)
        if self.size < self.limit:
            self.parts.append(text[: self.limit - self.size])
            self.size += len(self.parts[-1])
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def take(self) -> str:
        out = "".join(self.parts)
        self.parts, self.size = [], 0
        return out


def _make_encoder():
    """A JSON encoder immune to monkeypatching: strings travel as hex of their UTF-8 bytes."""

    def encode(
        obj,
        _type=type,
        _str=str,
        _int=int,
        _float=float,
        _bool=bool,
        _list=list,
        _tuple=tuple,
        _dict=dict,
        _repr_int=int.__repr__,
        _repr_float=float.__repr__,
        _hex=bytes.hex,
        _enc=str.encode,
        _join=str.join,
    ) -> str:
        kind = _type(obj)
        if obj is None:
            return "null"
        if kind is _bool:
            return "true" if obj else "false"
        if kind is _int:
            return _repr_int(obj)
        if kind is _float:
            text = _repr_float(obj)
            return text if text not in ("nan", "inf", "-inf") else "null"
        if kind is _str:
            return '"' + _hex(_enc(obj, "utf-8", "surrogatepass")) + '"'
        if kind is _list or kind is _tuple:
            return "[" + _join(",", [encode(x) for x in obj]) + "]"
        if kind is _dict:
            return (
                "{"
                + _join(
                    ",",
                    ['"' + _hex(_enc(_str(k), "utf-8")) + '":' + encode(v) for k, v in obj.items()],
                )
                + "}"
            )
        return encode(_str(obj))

    return encode


def _apply_limits(limits: dict) -> None:
    """Lower (soft = hard) resource limits; an unprivileged process can never raise them again."""
    table = {
        "memory_mb": (resource.RLIMIT_AS, 1024 * 1024),
        "cpu_s": (resource.RLIMIT_CPU, 1),
        "file_mb": (resource.RLIMIT_FSIZE, 1024 * 1024),
        "processes": (getattr(resource, "RLIMIT_NPROC", None), 1),
        "open_files": (resource.RLIMIT_NOFILE, 1),
    }
    for key, (which, unit) in table.items():
        value = limits.get(key)
        if value is None or which is None:
            continue
        amount = int(value * unit)
        soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            amount = min(amount, hard)
        resource.setrlimit(which, (amount, amount))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _describe(exc: BaseException, filename: str, lines: list[str]) -> dict:
    """Type, message and line (in the cell part) of an exception, defensively formatted."""
    try:
        name = type.__dict__["__name__"].__get__(type(exc))
    except BaseException:
        name = "Exception"
    try:
        message = str(exc)
    except BaseException:
        message = "<the exception could not be printed>"
    line = None
    try:
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == filename:
                line = tb.tb_lineno
            tb = tb.tb_next
    except BaseException:
        line = None
    source_line = lines[line - 1].strip() if line and 0 < line <= len(lines) else None
    return {"type": name, "message": message[:4000], "line": line, "source": source_line}


def _guarded(name: str, prefixes: tuple) -> bool:
    return name in prefixes or name.split(".", 1)[0] in prefixes


def _behavioural(value) -> bool:
    """Callables and modules: what a test's result can depend on (data attributes are library state)."""
    return callable(value) or type(value) is types.ModuleType


def _take_snapshot(prefixes: tuple, modules: dict, ns: dict) -> list:
    """Identity snapshot of the guarded modules' callables: [(label, mapping, key, value, code, defaults, kwdefaults)]."""
    import warnings

    entries = []
    function = types.FunctionType
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for modname, module in list(modules.items()):
            if type(module) is not types.ModuleType or not _guarded(modname, prefixes):
                continue
            entries.append(
                (f"sys.modules[{modname!r}]", modules, modname, module, None, None, None)
            )
            mapping = module.__dict__
            for key, value in list(mapping.items()):
                if not _behavioural(value):
                    continue
                entries.append(_entry(f"{modname}.{key}", mapping, key, value, function))
                if issubclass(type(value), type) and not (value.__flags__ & (1 << 9)):
                    if value.__dict__.get("__module__") != modname:
                        continue
                    cls_map = value.__dict__
                    for attr, member in list(cls_map.items()):
                        if _behavioural(member) or type(member) in (
                            staticmethod,
                            classmethod,
                            property,
                        ):
                            entries.append(
                                _entry(f"{modname}.{key}.{attr}", cls_map, attr, member, function)
                            )
    entries.append(
        (
            "the notebook's __builtins__",
            ns,
            "__builtins__",
            ns.get("__builtins__"),
            None,
            None,
            None,
        )
    )
    return entries


def _entry(label: str, mapping, key: str, value, function) -> tuple:
    if type(value) is function:
        return (
            label,
            mapping,
            key,
            value,
            value.__code__,
            value.__defaults__,
            value.__kwdefaults__,
        )
    return (label, mapping, key, value, None, None, None)


def _file_origin(filename: str) -> str:
    """'student' (solution or added cells), 'course' (instructor cells), 'library' (a file) or 'unknown'."""
    if filename.startswith(STUDENT_FILE_PREFIXES):
        return "student"
    if filename.startswith(COURSE_FILE_PREFIXES):
        return "course"
    return "unknown" if filename.startswith("<") else "library"


def _origin(obj, depth: int = 0) -> str:
    """Where a callable's code comes from, without running any of its code."""
    kind = type(obj)
    if depth > 4:
        return "unknown"
    if kind is types.FunctionType:
        return _file_origin(obj.__code__.co_filename)
    if kind is types.MethodType:
        return _origin(obj.__func__, depth + 1)
    if kind in (staticmethod, classmethod):
        return _origin(obj.__func__, depth + 1)
    if kind is types.ModuleType:
        file = obj.__dict__.get("__file__")
        return "library" if type(file) is str and not file.startswith("<") else "unknown"
    mro = type.__dict__["__mro__"].__get__(kind)
    if issubclass(kind, type):  # a class: judged by the functions it defines
        found = [
            _file_origin(v.__code__.co_filename)
            for v in obj.__dict__.values()
            if type(v) is types.FunctionType
        ]
        for verdict in ("student", "unknown", "course", "library"):
            if verdict in found:
                return verdict
        return "unknown"
    if issubclass(kind, _PARTIAL):
        return _origin(obj.func, depth + 1)
    for klass in mro:  # other callable objects: judged by their __call__
        call = klass.__dict__.get("__call__")
        if type(call) is types.FunctionType:
            return _origin(call, depth + 1)
    return "unknown"


def _judge(label: str, old, new, missing) -> tuple[str, str] | None:
    """('tamper' | 'review', text) for a replaced guarded object, or None when it is harmless."""
    if new is missing:
        return ("review", f"{label} was deleted")
    origin = _origin(new)
    if origin == "student":
        return ("tamper", f"{label} was replaced by your code")
    if origin in ("library", "course"):
        if getattr(new, "__wrapped__", None) is old:
            return None  # a library wrapping its own function (e.g. torch's lazy decorators)
        return ("review", f"{label} was replaced by another library function")
    return ("tamper", f"{label} was replaced by an object of unknown origin")


def _check_snapshot(entries: list, gettrace, getprofile, limit: int = 20) -> list[list[str]]:
    """[[verdict, text]] for guarded objects that differ from the snapshot (at most ``limit``)."""
    missing = object()
    changed: list[list[str]] = []
    for label, mapping, key, value, code, defaults, kwdefaults in entries:
        current = mapping.get(key, missing)
        if current is not value:
            verdict = _judge(label, value, current, missing)
            if verdict is not None:
                changed.append(list(verdict))
        elif code is not None and value.__code__ is not code:
            origin = _file_origin(value.__code__.co_filename)
            changed.append(
                [
                    "tamper" if origin in ("student", "unknown") else "review",
                    f"the code of {label} was replaced",
                ]
            )
        elif code is not None and (
            value.__defaults__ is not defaults or value.__kwdefaults__ is not kwdefaults
        ):
            changed.append(["tamper", f"the default arguments of {label} were changed"])
        if len(changed) >= limit:
            break
    for name, probe in (("trace", gettrace), ("profile", getprofile)):
        active = probe()
        if active is not None:
            verdict = "tamper" if _origin(active) in ("student", "unknown") else "review"
            changed.append([verdict, f"a {name} function (sys.set{name}) is active"])
    return changed


def main(argv: list[str]) -> None:
    fd = int(argv[1])
    config = json.loads(argv[2])
    _apply_limits(config.get("limits", {}))
    os.chdir(config.get("workdir", os.getcwd()))

    import _socket
    import threading

    # stdin: nothing to read, clearly.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdin = _NoStdin()
    builtins.input = _no_input
    capture = _Capture(int(config.get("stdout_chars", 4000)))
    sys.stdout = capture
    sys.stderr = capture

    # The notebook's own module, so that `import __main__` and pickling see the notebook.
    user_module = types.ModuleType("__main__")
    user_module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = user_module
    ns = user_module.__dict__

    sock = _socket.socket(fileno=fd)
    send_raw, recv_raw = sock.send, sock.recv
    loads, encode = marshal.loads, _make_encoder()
    run, build = exec, compile
    getpid, gettrace, getprofile = os.getpid, sys.gettrace, sys.getprofile
    enumerate_threads = threading.enumerate
    modules = sys.modules
    frame_size = 60_000
    my_pid = getpid()
    function_type, exit_now = types.FunctionType, os._exit
    state = {
        "kind": "setup",
        "seq": 0,
        "watch": False,
        "busy": False,
        "interrupted": False,
        "in_hook": False,
    }

    def send(message: dict) -> None:
        data = encode(message).encode("ascii")
        for start in range(0, len(data), frame_size) or [0]:
            chunk = data[start : start + frame_size]
            send_raw((b"\x01" if start + frame_size >= len(data) else b"\x00") + chunk)

    def send_event(message: dict) -> None:
        """One self-contained frame (audit events may come from any thread, between frames)."""
        send_raw(b"\x02" + encode(message).encode("ascii")[:frame_size])

    def recv() -> dict:
        parts = []
        while True:
            frame = recv_raw(frame_size + 1)
            if not frame:
                raise SystemExit(0)
            parts.append(frame[1:])
            if frame[:1] == b"\x01":
                return loads(b"".join(parts))

    def hook(event: str, args: tuple) -> None:
        if not state["watch"] or state["in_hook"]:
            return
        state["in_hook"] = True
        try:
            if event == "object.__setattr__":
                target, attr = args[0], args[1]
                if (
                    attr in CODE_ATTRS
                    and type(target) is function_type
                    and state["kind"] != "instructor"
                ):
                    origin = target.__code__.co_filename
                    if origin.startswith(COURSE_FILE_PREFIXES):
                        name = getattr(target, "__qualname__", "?")
                        send_event(
                            {
                                "op": "audit",
                                "seq": state["seq"],
                                "event": "tamper.function_code",
                                "detail": f"changed {attr} of {name} (defined in {origin})",
                            }
                        )
            elif event in REVIEW_EVENTS or (
                event in ("os.listdir", "os.scandir") and "/proc" in str(args[0] if args else "")
            ):
                send_event(
                    {
                        "op": "audit",
                        "seq": state["seq"],
                        "event": event,
                        "detail": str(args[:2])[:200],
                    }
                )
        except BaseException:
            pass
        finally:
            state["in_hook"] = False

    sys.addaudithook(hook)

    def on_interrupt(signum, frame) -> None:
        if state["busy"]:
            state["interrupted"] = True
            raise KeyboardInterrupt("cell time limit reached")

    signal.signal(signal.SIGINT, on_interrupt)

    snapshot: list = []
    baseline_threads: set = set()

    def integrity() -> list[list[str]]:
        """The snapshot check; if student objects make it fail, that failure is the finding."""
        try:
            return _check_snapshot(snapshot, gettrace, getprofile)
        except BaseException:
            return [["tamper", "the integrity check was disturbed by an object the code installed"]]

    send({"op": "hello", "pid": my_pid, "uid": os.getuid(), "python": sys.version.split()[0]})

    while True:
        command = recv()
        op = command.get("op")
        if getpid() != my_pid:  # a forked child must never act as the runner
            exit_now(70)
        state["seq"] = seq = command.get("seq", 0)
        if op == "exit":
            exit_now(0)
        if op == "ping":
            send({"op": "pong", "seq": seq})
            continue
        if op == "snapshot":
            failed = []
            for name in command.get("preimport", []):
                try:
                    __import__(name)
                except BaseException as exc:  # a guarded module that is not installed is fine
                    failed.append(f"{name}: {type(exc).__name__}")
            snapshot = _take_snapshot(tuple(command.get("prefixes", [])), modules, ns)
            baseline_threads = {id(t) for t in enumerate_threads()}
            state["watch"] = True
            send({"op": "snapshot", "seq": seq, "entries": len(snapshot), "failed": failed})
            continue
        if op != "exec":
            send({"op": "error", "seq": seq, "message": f"unknown command {op!r}"})
            continue

        kind = command["kind"]
        state["kind"] = kind
        check = bool(command.get("check")) and bool(snapshot)
        before = integrity() if check else []
        names_before = dict(list(ns.items()))
        status, failed_part, error = "ok", None, None
        for index, (_label, filename, source) in enumerate(command["parts"]):
            lines = source.splitlines()
            state["busy"], state["interrupted"] = True, False
            try:
                run(build(source, filename, "exec", dont_inherit=True), ns)
            except BaseException as exc:  # noqa: BLE001 - everything the cell raises is its result
                state["busy"] = False
                status, failed_part, error = "error", index, _describe(exc, filename, lines)
                break
            finally:
                state["busy"] = False
        if getpid() != my_pid:
            exit_now(70)
        after = integrity() if check else []
        try:  # student threads may still change the namespace or patch threading
            items = list(ns.items())
            changed = [k for k, v in items if names_before.get(k, names_before) is not v]
            changed += [k for k in names_before if k not in ns]
        except BaseException:
            changed = []
        try:
            threads = [
                str(t.name)
                for t in enumerate_threads()
                if id(t) not in baseline_threads and t.is_alive()
            ]
        except BaseException:
            threads = ["<threads could not be listed>"]
        send(
            {
                "op": "result",
                "seq": seq,
                "status": status,
                "part": failed_part,
                "error": error,
                "interrupted": state["interrupted"],
                "before": before,
                "after": after,
                "changed": changed[:500],
                "threads": threads[:20],
                "stdout": capture.take(),
            }
        )


if __name__ == "__main__":
    main(sys.argv)
