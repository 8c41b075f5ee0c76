"""uvicorn's h11 protocol with a deadline for reading a request.

uvicorn waits without limit for a client that opens a connection and sends nothing, or drips its headers or body
in a byte at a time (slowloris): each such connection holds a socket and a request slot for as long as the client
likes. :func:`read_timeout_protocol` returns a protocol class that gives every request ``seconds`` from its first
byte (or from the connection's opening) to arrive whole; a client that is slower gets ``408 Request Timeout``
and the connection is closed.
"""

from __future__ import annotations

from typing import Any

_BODY = b'{"detail": "the request did not arrive in time"}'
_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(_BODY)).encode() + b"\r\nconnection: close\r\n\r\n" + _BODY)


def read_timeout_protocol(seconds: float) -> type:
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class ReadTimeoutH11Protocol(H11Protocol):
        read_timeout = seconds

        def connection_made(self, transport: Any) -> None:
            self._read_timer = None
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._read_timer is None:
                self._arm()
            super().data_received(data)
            if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):  # the request has arrived whole
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._read_timer = self.loop.call_later(self.read_timeout, self._read_timed_out)

        def _disarm(self) -> None:
            timer = getattr(self, "_read_timer", None)
            if timer is not None:
                timer.cancel()
                self._read_timer = None

        def _read_timed_out(self) -> None:
            self._read_timer = None
            if self.transport.is_closing() or self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
                return
            if self.cycle is None or not self.cycle.response_started:
                self.transport.write(_TIMEOUT)
            self.transport.close()

    return ReadTimeoutH11Protocol
