"""A slow local HTTP upstream: answers every request after a fixed delay. With
no delay, it stands for an OpenTelemetry collector too: it reads what it is
sent (an OTLP export's body) and answers 200.

Run as `python -m bench.upstream PORT DELAY_SECONDS`; it listens on 127.0.0.1 only.
"""

import asyncio
import re
import sys

BODY = b'{"upstream": "ok"}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)


async def serve(port: int, delay: float) -> None:
    async def answer(reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if length:
                await reader.readexactly(int(length.group(1)))
            await asyncio.sleep(delay)
            writer.write(RESPONSE)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), float(sys.argv[2])))
