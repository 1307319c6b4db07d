"""Sessions: who owns which jobs, independent of the socket a client happens to use.

A ZeroMQ routing id is chosen by the peer and a connection can drop at any time, so neither can own
a job. A *session* does: it is created for a connection at its first message, named by a secret
token that `welcome` gives only to that connection, and a new connection that says `hello` with the
token takes the session over (its queued and running jobs' events then flow to the new socket). With
CurveZMQ keys a session is also bound to the client's public key.

Connections are told apart by routing id *and* file descriptor: the daemon's socket monitor reports
each disconnection with its fd, and every received frame carries the fd it came from (`SRCFD`), so a
peer that connects later with a departed client's routing id is a new connection with nothing of
the old one's.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ErrorCode, RequestError


@dataclass(eq=False)
class Connection:
    """One live client socket, as the daemon's ROUTER sees it."""

    route: bytes  # ZeroMQ routing id
    fd: int  # the connection's file descriptor in the daemon (-1 where the transport has none)
    user: str | None  # the client's CURVE public key (z85) when keys are on
    session: Session | None = None
    since: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class Session:
    """A client's identity across reconnects: its jobs, its kept results, its token."""

    id: str
    token: str
    identity: str  # what caps count against: the public key with keys, else the session itself
    user: str | None  # public key it is bound to (keys on), else None
    conn: Connection | None = None
    detached_at: float | None = None  # when it lost its last connection
    jobs: set[str] = field(default_factory=set)  # its queued and running jobs
    pending: deque[Any] = field(default_factory=deque)  # submits waiting for the decode pool, in order
    decoding: Any = None  # its submit in the decode pool now, if any


class Sessions:
    """Every connection and session the daemon knows; used only by the I/O loop's thread."""

    def __init__(
        self,
        grace: float,
        max_connections: int,
        max_connections_per_client: int,
        on_drop: Callable[[Connection], None] | None = None,
    ) -> None:
        self.grace = grace
        self.on_drop = on_drop  # told of every connection found gone
        self.max_connections = max_connections
        self.max_connections_per_client = max_connections_per_client
        self.conns: dict[bytes, Connection] = {}
        self._by_fd: dict[int, bytes] = {}
        self._by_token: dict[str, Session] = {}
        self.by_id: dict[str, Session] = {}

    # -- connections ---------------------------------------------------------------------------
    def connection(self, route: bytes, fd: int, user: str | None) -> Connection:
        """The connection a message came from; a new one (within the caps) if it is not known."""
        conn = self.conns.get(route)
        if conn is not None and conn.fd == fd and conn.user == user:
            return conn
        if conn is not None:  # the routing id is reused by another connection: the old one is gone
            self.drop(conn)
        if fd >= 0 and fd in self._by_fd:  # the fd is reused: its old connection is gone
            old = self.conns.get(self._by_fd[fd])
            if old is not None:
                self.drop(old)
        self._admit(user)
        conn = Connection(route, fd, user)
        self.conns[route] = conn
        if fd >= 0:
            self._by_fd[fd] = route
        return conn

    def _admit(self, user: str | None) -> None:
        if len(self.conns) >= self.max_connections:
            raise RequestError(
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"the daemon serves at most {self.max_connections} connections at once",
            )
        if user is not None:
            mine = sum(1 for c in self.conns.values() if c.user == user)
            if mine >= self.max_connections_per_client:
                raise RequestError(
                    ErrorCode.TOO_MANY_CONNECTIONS,
                    f"this client key already has {mine} connections; at most "
                    f"{self.max_connections_per_client} are served at once",
                )

    def disconnected(self, fd: int) -> Connection | None:
        """The monitor saw connection `fd` close: forget it, detach its session."""
        route = self._by_fd.get(fd)
        conn = self.conns.get(route) if route is not None else None
        if conn is None or conn.fd != fd:
            self._by_fd.pop(fd, None)
            return None
        self.drop(conn)
        return conn

    def drop(self, conn: Connection) -> None:
        if self.conns.get(conn.route) is conn:
            del self.conns[conn.route]
        if conn.fd >= 0 and self._by_fd.get(conn.fd) == conn.route:
            del self._by_fd[conn.fd]
        self._detach(conn)
        if self.on_drop is not None:
            self.on_drop(conn)

    def _detach(self, conn: Connection) -> None:
        session = conn.session
        conn.session = None
        if session is not None and session.conn is conn:
            session.conn = None
            session.detached_at = time.monotonic()

    # -- sessions ------------------------------------------------------------------------------
    def session_of(self, conn: Connection) -> Session:
        """The connection's session, created at its first message (whatever the message is)."""
        if conn.session is None:
            token = secrets.token_urlsafe(32)
            sid = secrets.token_hex(8)
            identity = f"key:{conn.user}" if conn.user is not None else f"session:{sid}"
            session = Session(sid, token, identity, conn.user)
            self._by_token[token] = session
            self.by_id[sid] = session
            self._attach(session, conn)
        assert conn.session is not None
        return conn.session

    def resume(self, conn: Connection, token: Any) -> Session | None:
        """Hand the session named by `token` to `conn`; None when the token names nothing this
        connection may have (unknown, forgotten, or bound to another key: they look the same)."""
        session = self._by_token.get(token) if isinstance(token, str) else None
        if session is None or session.user != conn.user:
            return None
        if conn.session is not None and conn.session is not session:
            self._detach(conn)
        if session.conn is not None and session.conn is not conn:
            session.conn.session = None  # the old socket loses it; its next message starts afresh
        self._attach(session, conn)
        return session

    def _attach(self, session: Session, conn: Connection) -> None:
        session.conn = conn
        session.detached_at = None
        conn.session = session

    def abandoned(self, now: float) -> list[Session]:
        """Sessions without a connection for longer than the grace period that still have jobs."""
        return [
            s
            for s in self.by_id.values()
            if s.conn is None and s.detached_at is not None and now - s.detached_at >= self.grace and s.jobs
        ]

    def forget_idle(self, now: float, keeps_results: set[str]) -> None:
        """Forget sessions with no connection, job, pending submit or kept result after the grace."""
        for session in list(self.by_id.values()):
            if (
                session.conn is None
                and session.detached_at is not None
                and now - session.detached_at >= self.grace
                and not session.jobs
                and not session.pending
                and session.decoding is None
                and session.id not in keeps_results
            ):
                del self.by_id[session.id]
                del self._by_token[session.token]
