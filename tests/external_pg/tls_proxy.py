"""TLS in front of the embedded wheel's PostgreSQL, which is built without OpenSSL ("SSL is not supported by this
build"): a terminating proxy that speaks PostgreSQL's own TLS negotiation, as a managed database's front end does.

A client's SSLRequest is answered 'S' and the connection upgraded to TLS with the generated server certificate;
the client's startup message and everything after it (SCRAM included) then go through unchanged to the server's
Unix socket, the only other way in. A client that does not ask for TLS gets an ErrorResponse and is closed
(`hostssl` only), one asking for GSS encryption is told 'N'. No library does this handshake (stunnel and
asyncio's TLS servers expect TLS from the first byte), hence by hand: the protocol part is the 8-byte request.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
import threading
from pathlib import Path

__all__ = ["TlsProxy"]

SSL_REQUEST, GSS_REQUEST = 80877103, 80877104


def _error(message: str) -> bytes:
    fields = b"SFATAL\0VFATAL\0C28000\0M" + message.encode() + b"\0\0"
    return b"E" + struct.pack("!I", len(fields) + 4) + fields


class TlsProxy:
    """Listens on (host, port) in a thread of its own; forwards TLS clients to the Unix socket `backend`."""

    def __init__(self, host: str, port: int, backend: Path, cert: Path, key: Path):
        self.host, self.port, self.backend = host, port, str(backend)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(cert, key)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tls-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None

    def start(self) -> "TlsProxy":
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the TLS proxy did not start")
        return self

    def stop(self) -> None:
        async def close():
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._server = self.loop.run_until_complete(asyncio.start_server(self._client, self.host, self.port))
        self._ready.set()
        self.loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(8)
                length, code = struct.unpack("!II", head)
                if length == 8 and code == GSS_REQUEST:
                    writer.write(b"N")
                    await writer.drain()
                    continue
                if length == 8 and code == SSL_REQUEST:
                    writer.write(b"S")
                    await writer.drain()
                    await writer.start_tls(self.context)
                    break
                writer.write(_error("TLS is required: connect with sslmode=verify-full"))
                await writer.drain()
                return
            up_reader, up_writer = await asyncio.open_unix_connection(self.backend)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            writer.close()
            return
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except asyncio.CancelledError:
            pass  # stopped
        finally:
            for w in (writer, up_writer):
                w.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            try:
                writer.write_eof() if writer.can_write_eof() else writer.close()
            except (OSError, RuntimeError):
                writer.close()
