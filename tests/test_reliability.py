"""The outside view of issue 9: a short property-based fuzz and faults a client can cause.

Everything here talks to a daemon of its own (so a death or a hang cannot take other tests with it)
only through the protocol, and judges it only by PROTOCOL.md and its welcome, with the same harness
as the long run (`python -m reliability`, figures in docs/RELIABILITY.md). SIGTERM, resume and keys
are tested beside the daemon's own code; this file is about what any peer on the socket can do.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reliability.daemon import Daemon, probe  # noqa: E402
from reliability.fuzz import Fuzz, FuzzPlan, scan_log  # noqa: E402
from reliability.messages import Case, build_base, pack  # noqa: E402
from reliability.peer import Conversation  # noqa: E402
from reliability.report import Tally, failures, markdown  # noqa: E402
from reliability.values import PROMPTS, values_for  # noqa: E402

# Case kinds of the generator, each drawn by hypothesis (the long run weighs them instead).
KINDS = (
    "param param_multi foreign_param unit item compare image submit_field frame_ref frames_raw encoding "
    "nesting request ids oversize"
).split()


# Deterministic (the same examples on every run, so CI cannot flake on a new draw), no shrinking (a
# failing example's reproducer is in the report, and shrinking would replay slow no-reply cases).
FUZZ = settings(
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    report_multiple_bugs=False,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def target(underpaint_home: Path) -> Iterator[Daemon]:
    """A daemon for this file alone, with a small message limit so oversize cases stay cheap."""
    daemon = Daemon(["--preset", "tiny", "--threads", "1", "--max-message-mb", "8"])
    daemon.start()
    yield daemon
    daemon.stop()
    daemon.close()


@pytest.fixture(scope="module")
def fuzz(target: Daemon) -> Fuzz:
    """The long run's fuzzer, connected; accepted jobs are cancelled at once unless they are outside
    the spec (then they run, to see how they end) and cheap."""
    plan = FuzzPlan(
        messages=0,
        reply_timeout=20,
        hang_timeout=30,
        job_timeout=120,
        run_cost=4,
        runs_per_label=0,
        max_inflight=4,
    )
    fz = Fuzz(target, plan, Tally())
    fz.sample()
    fz.connect()
    return fz


@pytest.fixture
def before(fuzz: Fuzz) -> dict[str, int]:
    """The findings so far: each test answers only for those it adds."""
    return dict(fuzz.tally.findings)


def assert_clean(fz: Fuzz, before: dict[str, int] | None = None) -> None:
    """No new finding that must be zero since `before` (a copy of the findings at a test's start)."""
    bad = {k: v - (before or {}).get(k, 0) for k, v in failures(fz.tally).items()}
    bad = {k: v for k, v in bad.items() if v > 0}
    assert not bad, markdown(fz.tally, "fuzz", f"new findings {bad}")


# -- the short fuzz ---------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_generated_messages_get_documented_replies(fuzz: Fuzz, before: dict[str, int]) -> None:
    """Every kind of case the long run sends: no death, no hang, no traceback, no undocumented reply."""

    @settings(FUZZ, max_examples=300)
    @given(rng=st.randoms(use_true_random=False), kind=st.sampled_from(KINDS))
    def one(rng, kind: str) -> None:
        assert fuzz.gen is not None
        start = dict(fuzz.tally.findings)
        fuzz.one(fuzz.gen.make(rng, kind))
        assert_clean(fuzz, start)

    started = time.monotonic()
    one()
    fuzz.checkpoint()  # jobs ended, fresh connection answered, RSS and log read
    assert_clean(fuzz, before)
    assert fuzz.tally.counts["messages"] >= 300
    assert time.monotonic() - started < 240


MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=40)
    | st.sampled_from([text for _, text, _ in PROMPTS]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@pytest.mark.timeout(300)
def test_any_value_in_any_param_is_refused_or_taken_cleanly(fuzz: Fuzz, before: dict[str, int]) -> None:
    """Arbitrary msgpack values in every param of every tiny preset's op specs. A non-finite float is
    never accepted (it is outside every range), and nothing ends in a traceback."""
    assert fuzz.welcome is not None and fuzz.gen is not None
    welcome, gen = fuzz.welcome, fuzz.gen
    fields = [(p, op, name) for p, op in gen.pairs for name in welcome.spec(p, op)["params"]]

    @settings(FUZZ, max_examples=200)
    @given(field=st.sampled_from(fields), value=MSGPACK_VALUES)
    def one(field: tuple[str, str, str], value: object) -> None:
        preset, op, name = field
        base = build_base(welcome, preset, op, 11)
        msg = base.message(gen.new_id())
        msg["params"][name] = value
        nonfinite = isinstance(value, float) and not math.isfinite(value)
        case = gen.submit_case(
            "hypothesis", f"{preset}/{op} params.{name}={value!r:.40}", base, msg, nonfinite
        )
        start = dict(fuzz.tally.findings)
        fuzz.one(case)
        assert_clean(fuzz, start)
        assert not fuzz.tally.findings["accepted_invalid:hypothesis"], markdown(fuzz.tally, "fuzz")

    sent_before = fuzz.tally.counts["messages"]
    one()
    fuzz.checkpoint()
    assert_clean(fuzz, before)
    assert fuzz.tally.counts["messages"] - sent_before >= 200


def test_every_value_outside_a_numeric_spec_is_refused(fuzz: Fuzz, before: dict[str, int]) -> None:
    """Each boundary probe outside an int or float param's spec (NaN, infinities, just past min and
    max, huge ints, wrong kinds), for every op of every tiny preset, is refused before `accepted`
    with a documented code: nothing of the kind can reach a pipeline."""
    assert fuzz.welcome is not None and fuzz.gen is not None
    welcome, gen = fuzz.welcome, fuzz.gen
    sent = 0
    for preset, op in gen.pairs:
        base = build_base(welcome, preset, op, 5)
        for name, spec in welcome.spec(preset, op)["params"].items():
            if spec.get("type") not in ("int", "float"):
                continue
            for value in values_for(spec, name):
                if not value.bad:
                    continue
                msg = base.message(gen.new_id())
                msg["params"][name] = value.value
                label = f"{preset}/{op} params.{name}={value.tag}"
                fuzz.one(gen.submit_case("outside_spec", label, base, msg, True))
                sent += 1
    fuzz.checkpoint()
    assert_clean(fuzz, before)
    accepted = fuzz.tally.examples.get("accepted_invalid:outside_spec", [])
    assert not fuzz.tally.findings["accepted_invalid:outside_spec"], accepted
    assert sent > 500


# -- faults a client can cause ----------------------------------------------------------------------
CLIENT = textwrap.dedent(
    """
    import sys, msgpack, zmq
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(sys.argv[1])
    sock.send(msgpack.packb({"type": "hello", "id": 1, "protocol": 1, "client": "doomed"}))
    sock.send(msgpack.packb({"type": "submit", "id": 2, "op": "txt2img", "model": "tiny",
                             "params": {"steps": 200, "width": 256, "height": 256, "seed": 5}}))
    while True:
        msg = msgpack.unpackb(sock.recv(), raw=False)
        if msg.get("type") == "progress":
            print("running", msg["job"], flush=True)
    """
)


def conversation(fz: Fuzz, target: Daemon) -> Conversation:
    return Conversation(target.endpoint, fz.ctx, fz.judge, fz.tally, fz.seen_jobs, options=target.options)


def ask(fz: Fuzz, target: Daemon, message: dict, timeout: float = 10.0) -> dict:
    """One request on a fresh connection, judged like any fuzz case; returns its reply."""
    case = Case("fault", f"fault {message['type']}", [pack(message)], message["type"], rid=message["id"])
    conv = conversation(fz, target)
    try:
        reply = conv.exchange(case, timeout)
        assert isinstance(reply, dict), f"no reply to {message['type']} within {timeout} s"
        return reply
    finally:
        conv.close()


def run_job(fz: Fuzz, target: Daemon, seed: int, label: str) -> None:
    """A cheap tiny txt2img on a fresh connection: accepted, and ended by a result within minutes."""
    assert fz.welcome is not None
    msg = build_base(fz.welcome, "tiny", "txt2img", seed).message(label)
    expect = {"op": "txt2img", "model": "tiny", "seed": seed, "images": 1}
    case = Case("fault", label, [pack(msg)], "submit", rid=label, message=msg, submit=expect)
    conv = conversation(fz, target)
    try:
        reply = conv.exchange(case, 20)
        assert isinstance(reply, dict) and reply.get("type") == "accepted", reply
        assert not conv.drain(job_timeout=240), "the job ended"
        assert conv.tracks[reply["job"]].end == "result", conv.tracks[reply["job"]]
    finally:
        conv.close()


@pytest.mark.timeout(300)
def test_client_killed_mid_job_leaves_the_daemon_serving_others(
    fuzz: Fuzz, target: Daemon, before: dict[str, int]
) -> None:
    """kill -9 of a client process while its job runs: the daemon lives, answers a new client at
    once, runs that client's job, and logs no traceback."""
    offset = target.log_since(0)[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT, target.endpoint], stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("running"), f"the doomed client's job never ran: {line!r}"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert target.alive()
    latency = probe(target.endpoint, fuzz.ctx, 5.0, target.options)
    assert latency is not None and latency < 2.0, "a new client is answered while the orphan job runs"
    run_job(fuzz, target, 3, "after-kill")
    assert target.alive()
    tally = Tally()
    scan_log(target.log_since(offset)[0], tally)
    assert not tally.findings, tally.as_dict()["examples"]
    assert_clean(fuzz, before)


@pytest.mark.timeout(120)
def test_peers_that_do_not_speak_zmtp_are_shrugged_off(
    fuzz: Fuzz, target: Daemon, before: dict[str, int]
) -> None:
    """Raw TCP on the daemon's port (an HTTP request, garbage, a greeting cut short, a silent socket)
    neither stops it nor slows the answer to a real client."""
    host, port = target.endpoint.removeprefix("tcp://").rsplit(":", 1)
    junk = [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(4096), b"\xff" + b"\x00" * 8 + b"\x7f\x03", b""]
    sockets = []
    for payload in junk * 5:
        s = socket.create_connection((host, int(port)), timeout=5)
        if payload:
            s.sendall(payload)
        sockets.append(s)
    try:
        latency = probe(target.endpoint, fuzz.ctx, 5.0, target.options)
        assert latency is not None and latency < 2.0
    finally:
        for s in sockets:
            s.close()
    assert target.alive()
    assert ask(fuzz, target, {"type": "status", "id": "after-junk"})["type"] == "status"


@pytest.mark.timeout(180)
def test_reconnecting_many_times_does_not_lock_a_client_out(
    fuzz: Fuzz, target: Daemon, before: dict[str, int]
) -> None:
    """An editor that reconnects again and again (restarts, blips): each new connection is welcome
    after the old one closed; the daemon does not pile up per-connection state."""
    rss_before = target.rss()[0] or 0
    for i in range(150):
        sock = fuzz.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(target.endpoint)
        sock.send(pack({"type": "hello", "id": i, "protocol": 1, "client": "restless"}))
        assert sock.poll(10_000), f"connection {i}: no welcome"
        sock.recv()
        sock.close(0)
    time.sleep(1.0)
    reply = ask(fuzz, target, {"type": "hello", "id": "last", "protocol": 1, "client": "restless"})
    assert reply["type"] == "welcome", reply
    assert (target.rss()[0] or 0) - rss_before < 200 * 2**20, "150 short connections cost under 200 MB"
    assert_clean(fuzz, before)


@pytest.mark.timeout(240)
def test_a_client_that_never_reads_does_not_block_the_others(
    fuzz: Fuzz, target: Daemon, before: dict[str, int]
) -> None:
    """A client with previews on that never reads its socket (its buffer fills) does not stop the
    daemon from answering and finishing another client's job."""
    assert fuzz.welcome is not None
    sleeper = fuzz.ctx.socket(zmq.DEALER)
    sleeper.setsockopt(zmq.LINGER, 0)
    sleeper.setsockopt(zmq.RCVHWM, 1)
    sleeper.setsockopt(zmq.RCVBUF, 4096)
    sleeper.connect(target.endpoint)
    sleeper.send(pack({"type": "hello", "id": 0, "protocol": 1, "client": "sleeper"}))
    for i in range(3):
        msg = build_base(fuzz.welcome, "tiny", "txt2img", i).message(i + 1)
        msg["params"].update(steps=30, width=256, height=256)
        msg["preview"] = True
        sleeper.send(pack(msg))
    try:
        time.sleep(2.0)
        started = time.monotonic()
        reply = ask(fuzz, target, {"type": "status", "id": "while-sleeping"})
        assert reply["type"] == "status" and time.monotonic() - started < 2.0
        run_job(fuzz, target, 9, "beside-a-sleeper")
    finally:
        sleeper.close(0)
    assert_clean(fuzz, before)
