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

from twisted.internet import main, tcp
from twisted.python.failure import Failure


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


def directHalfCloser(transport: Any) -> Callable[[], None]:
    """
    A C{loseWriteConnection()} for C{transport} that sends the FIN at once
    when nothing is queued, for a protocol whose read side is still open.

    Twisted's C{loseWriteConnection} waits for the next writable event
    (two epoll changes and a loop turn) even with an empty buffer.  With
    nothing queued, no producer waiting to be resumed and no TLS, that
    event would only call C{socket.shutdown} and the protocol's
    C{writeConnectionLost}, so this does both right away, setting the
    flags Twisted's C{doWrite} sets.  The caller uses it only while its
    peer's side is still open: then C{writeConnectionLost} just notes the
    half-close and closes nothing under it.  Anything else goes through
    C{transport.loseWriteConnection}.
    """
    lose = transport.loseWriteConnection
    if not isinstance(transport, tcp.Connection):
        return lose

    def halfClose() -> None:
        producer = transport.producer
        if (transport.dataBuffer or transport._tempDataLen or transport.disconnecting
                or transport._writeDisconnecting or not transport.connected
                or transport.TLS
                or (producer is not None and (not transport.streamingProducer
                                              or transport.producerPaused))):
            lose()
            return
        transport._writeDisconnecting = True
        transport._writeDisconnected = True
        transport._closeWriteConnection()

    return halfClose


def queuedBytes(transport: Any) -> int:
    """
    How many bytes C{transport} holds that the kernel has not taken yet
    (Twisted's write buffer; 0 for a transport that has none).
    """
    if not isinstance(transport, tcp.Connection) or not transport.connected:
        return 0
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def closeNow(transport: Any) -> None:
    """
    Close C{transport} at once, dropping what it has queued: Envoy's
    C{NoFlush} close.  The socket is closed in order, so the peer sees the
    end of the stream (the kernel still resets if bytes the peer sent were
    never read), where Twisted's C{abortConnection} always resets
    (C{SO_LINGER} 0).  The steps are C{abortConnection}'s: reading and
    writing stop now, C{connectionLost} follows on the next loop turn, here
    with C{ConnectionDone}.  A transport that is not plain TCP (or has
    started TLS) is aborted.
    """
    if not isinstance(transport, tcp.Connection) or transport.TLS:
        transport.abortConnection()
        return
    if transport.disconnected or transport._aborting:
        return
    transport._aborting = True
    transport.stopReading()
    transport.stopWriting()
    transport.dataBuffer = b""
    transport.offset = 0
    transport._tempDataBuffer = []
    transport._tempDataLen = 0
    transport.doRead = _nothing
    transport.doWrite = _nothing
    transport.reactor.callLater(0, transport.connectionLost, Failure(main.CONNECTION_DONE))


def _nothing(*args: Any, **kwargs: Any) -> None:
    """
    What a closing transport does on a late event: nothing.
    """
