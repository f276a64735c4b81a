"""
Write-through for plain TCP transports: send at once when nothing is queued.

Twisted's C{transport.write} always queues and sends on the next writable
event, which costs two epoll changes and a loop turn per message.  A proxy
relays mostly small messages to a socket with an empty queue, so it tries
the send first (as Envoy does) and queues only what the kernel did not
take.  Whenever anything is queued, the transport is closing or it has
started TLS (the bytes must be encrypted), it falls
back to C{transport.write}, so ordering, producers and errors stay
Twisted's.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import tcp


def directWriter(transport: Any) -> Callable[[bytes], None]:
    """
    A C{write(data)} for C{transport}: write-through for a plain
    L{tcp.Connection}, its own C{write} for anything else (TLS, tests).
    """
    write = transport.write
    if not isinstance(transport, tcp.Connection):
        return write
    sock = transport.socket

    def send(data: bytes) -> None:
        if (transport.dataBuffer or transport._tempDataLen or transport.disconnecting
                or transport._writeDisconnecting or not transport.connected
                or transport.TLS):
            # Queued bytes go first; a transport that started TLS must encrypt.
            write(data)
            return
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            # Let Twisted's own write path meet and report the error.
            write(data)
            return
        if sent < len(data):
            write(data[sent:])

    return send
