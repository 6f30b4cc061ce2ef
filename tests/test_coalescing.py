"""Write coalescing, on a real asyncio transport over a real socket pair."""

from __future__ import annotations

import asyncio
import socket

from webhook.write_coalescing import CoalescingTransport


async def _pair() -> tuple[CoalescingTransport, socket.socket, asyncio.AbstractEventLoop]:
    loop = asyncio.get_running_loop()
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    return CoalescingTransport(transport, loop), peer, loop  # type: ignore[arg-type]


async def _read(loop: asyncio.AbstractEventLoop, peer: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await asyncio.wait_for(loop.sock_recv(peer, 65536), 5)
        if not chunk:
            break
        data += chunk
    return data


def test_two_writes_leave_together_and_in_order() -> None:
    async def run() -> None:
        transport, peer, loop = await _pair()
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        assert transport.get_write_buffer_size() == 19  # held, not sent yet
        transport.write(b"{}")
        assert transport.get_write_buffer_size() == 0  # sent with the second write
        assert await _read(loop, peer, 21) == b"HTTP/1.1 200 OK\r\n\r\n{}"
        transport.close()
        peer.close()

    asyncio.run(run())


def test_a_lone_write_is_sent_at_the_end_of_the_loop_pass() -> None:
    async def run() -> None:
        transport, peer, loop = await _pair()
        transport.write(b"alone")
        await asyncio.sleep(0)
        assert transport.get_write_buffer_size() == 0
        assert await _read(loop, peer, 5) == b"alone"
        transport.close()
        peer.close()

    asyncio.run(run())


def test_close_sends_what_is_held_before_closing() -> None:
    async def run() -> None:
        transport, peer, loop = await _pair()
        transport.write(b"last words")
        transport.close()
        assert await _read(loop, peer, 64) == b"last words"  # then end of stream
        assert transport.is_closing()
        peer.close()

    asyncio.run(run())
