"""The grader's end of the conversation with a sandboxed runner (:mod:`.runner`).

Transport: a Unix ``SOCK_SEQPACKET`` socket pair; one end is inherited by the runner. Messages
are split into frames of at most :data:`FRAME` bytes; a frame's first byte is ``0`` (more
follow), ``1`` (last frame) or ``2`` (a self-contained event, which may arrive between the
frames of another message).

* grader -> runner: ``marshal`` of a dict of plain values (trusted: only the grader writes it).
* runner -> grader: JSON whose strings are the hex of their UTF-8 bytes (see
  ``runner._make_encoder``). It is untrusted input: decoded with :mod:`json` under a size cap.

On Linux the grader's end has ``SO_PASSCRED``: the kernel stamps every frame with the process id
of its sender, so a frame written by any process but the runner (for example a child the
student's code forked) is detected as forged (:class:`ForgedMessage`).
"""

from __future__ import annotations

import json
import marshal
import select
import socket
import struct
import sys
import time

FRAME = 60_000
MAX_MESSAGE = 32 * 1024 * 1024
_UCRED = struct.Struct("iII")  # pid, uid, gid
HAS_CREDENTIALS = sys.platform.startswith("linux") and hasattr(socket, "SO_PASSCRED")


class ChannelError(RuntimeError):
    """The runner's channel failed; subclasses say how."""


class ChannelClosed(ChannelError):
    """The runner closed the socket (it exited or was killed)."""


class ChannelTimeout(ChannelError):
    """No complete message arrived before the deadline."""


class ForgedMessage(ChannelError):
    """A message came from a process other than the runner, or was malformed."""


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """(grader end, runner end). The runner end is inheritable; the grader end is not."""
    kind = socket.SOCK_SEQPACKET if hasattr(socket, "SOCK_SEQPACKET") else socket.SOCK_STREAM
    grader, runner = socket.socketpair(socket.AF_UNIX, kind)
    if HAS_CREDENTIALS:
        grader.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    for end in (grader, runner):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    runner.set_inheritable(True)
    return grader, runner


def _decode(value):
    """Undo the runner's hex encoding of strings (keys and values), recursively."""
    if isinstance(value, str):
        return bytes.fromhex(value).decode("utf-8", "replace")
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        return {_decode(k): _decode(v) for k, v in value.items()}
    return value


class Channel:
    """Send commands to and receive messages from one runner."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.runner_pid: int | None = (
            None  # learnt from the first message (sent before any student code)
        )
        self._parts: list[bytes] = []
        self._size = 0

    def send(self, message: dict) -> None:
        data = marshal.dumps(message)
        try:
            for start in range(0, max(len(data), 1), FRAME):
                last = start + FRAME >= len(data)
                self.sock.sendall((b"\x01" if last else b"\x00") + data[start : start + FRAME])
        except OSError as exc:
            raise ChannelClosed(f"the runner stopped reading ({exc})") from exc

    def _frame(self, timeout: float) -> tuple[bytes, int | None]:
        ready = select.select([self.sock], [], [], max(timeout, 0.0))[0]
        if not ready:
            raise ChannelTimeout("no message before the deadline")
        try:
            if HAS_CREDENTIALS:
                data, ancillary, _flags, _addr = self.sock.recvmsg(
                    FRAME + 1, socket.CMSG_SPACE(_UCRED.size)
                )
            else:
                data, ancillary = self.sock.recv(FRAME + 1), []
        except OSError as exc:
            raise ChannelClosed(f"the runner's socket failed ({exc})") from exc
        if not data:
            raise ChannelClosed("the runner closed its socket")
        pid = None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = _UCRED.unpack(payload[: _UCRED.size])[0]
        return data, pid

    def recv(self, timeout: float) -> dict:
        """The next complete message; raises a :class:`ChannelError` subclass."""
        deadline = time.monotonic() + timeout
        while True:
            data, pid = self._frame(deadline - time.monotonic())
            if HAS_CREDENTIALS:
                if self.runner_pid is None:
                    self.runner_pid = pid
                elif pid != self.runner_pid:
                    raise ForgedMessage(
                        f"a message came from process {pid}, not from the runner ({self.runner_pid}): "
                        "another process (e.g. a fork of the student's code) wrote to the grading channel"
                    )
            flag, body = data[:1], data[1:]
            if flag == b"\x02":
                return self._parse(body)
            self._size += len(body)
            if self._size > MAX_MESSAGE:
                raise ForgedMessage(f"a message larger than {MAX_MESSAGE} bytes")
            self._parts.append(body)
            if flag == b"\x01":
                whole = b"".join(self._parts)
                self._parts, self._size = [], 0
                return self._parse(whole)
            if flag != b"\x00":
                raise ForgedMessage(f"a frame with an unknown header byte {flag!r}")

    @staticmethod
    def _parse(body: bytes) -> dict:
        try:
            message = _decode(json.loads(body.decode("ascii")))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ForgedMessage(f"an undecodable message ({exc.__class__.__name__})") from exc
        if not isinstance(message, dict) or "op" not in message:
            raise ForgedMessage("a message without an 'op' field")
        return message

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
