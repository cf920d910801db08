"""The grading channel: framing, the runner's monkeypatch-proof encoder, forged and malformed frames."""

from __future__ import annotations

import builtins
import json
import os

import pytest

from coursegrader.grading import runner
from coursegrader.grading.protocol import FRAME, Channel, ForgedMessage, _decode, socket_pair


def runner_send(sock, message: dict, encode=None) -> None:
    """What the runner does: hex-JSON, split into frames."""
    data = (encode or runner._make_encoder())(message).encode("ascii")
    for start in range(0, len(data), FRAME):
        sock.send(
            (b"\x01" if start + FRAME >= len(data) else b"\x00") + data[start : start + FRAME]
        )


def test_encoder_round_trip_including_large_and_odd_values() -> None:
    grader, other = socket_pair()
    channel = Channel(grader)
    message = {
        "op": "result",
        "text": 'é \u2713 \x00 "quoted" \\ \ud800',
        "n": [1, 2.5, None, True],
        "nan": float("nan"),
        "big": "x" * (3 * FRAME),
        "nested": {"k": ["v"]},
    }
    runner_send(other, message)
    got = channel.recv(5)
    assert got["text"].startswith('é \u2713 \x00 "quoted" \\') and got["n"] == [1, 2.5, None, True]
    assert got["nan"] is None and len(got["big"]) == 3 * FRAME and got["nested"] == {"k": ["v"]}


def test_encoder_ignores_monkeypatched_builtins() -> None:
    encode = runner._make_encoder()
    saved = builtins.str, builtins.len, builtins.type, json.dumps
    try:  # what a student's code could do inside the runner process
        builtins.str = builtins.type = lambda *a, **k: "forged"
        builtins.len = lambda *a: 0
        json.dumps = lambda *a, **k: "forged"
        text = encode({"op": "result", "status": "error", "n": [1]})
    finally:
        builtins.str, builtins.len, builtins.type, json.dumps = saved
    assert _decode(json.loads(text)) == {"op": "result", "status": "error", "n": [1]}


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\x01not json", "undecodable"),
        (b"\x07{}", "unknown header"),
        (b'\x01["6869"]', "without an 'op'"),
    ],
)
def test_malformed_frames_are_rejected(frame: bytes, reason: str) -> None:
    grader, other = socket_pair()
    channel = Channel(grader)
    runner_send(other, {"op": "hello"})
    channel.recv(5)
    other.send(frame)
    with pytest.raises(ForgedMessage, match=reason):
        channel.recv(5)


def test_a_frame_from_another_process_is_forged() -> None:
    grader, other = socket_pair()
    channel = Channel(grader)
    runner_send(other, {"op": "hello"})
    assert channel.recv(5)["op"] == "hello"
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only writes a frame
        runner_send(other, {"op": "result", "status": "ok"})
        os._exit(0)
    os.waitpid(pid, 0)
    with pytest.raises(ForgedMessage, match=f"process {pid}"):
        channel.recv(5)
