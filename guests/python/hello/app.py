"""`py-hello`: an HTTP function in Python (world `wasi:http/proxy`).

Answers JSON with a greeting (`$GREETING`, or "Hello from Python!"), the
method and path it was called with, and the size of the request body.
"""

import json
import os

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Get,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)
from wit_world.imports.streams import StreamError_Closed


def read_body(request: IncomingRequest) -> bytes:
    """Reads the whole request body."""
    body = request.consume()
    stream = body.stream()
    data = bytearray()
    while True:
        try:
            data += stream.blocking_read(65536)
        except Exception as error:  # the end of the stream is an Err(closed)
            if isinstance(getattr(error, "value", None), StreamError_Closed):
                break
            raise
    return bytes(data)


def respond(out: ResponseOutparam, status: int, content_type: str, body: bytes) -> None:
    """Sends a complete response."""
    headers = Fields.from_list([("content-type", content_type.encode())])
    response = OutgoingResponse(headers)
    response.set_status_code(status)
    outgoing = response.body()
    ResponseOutparam.set(out, Ok(response))
    stream = outgoing.write()
    # blocking-write-and-flush takes at most 4096 bytes at a time.
    for start in range(0, len(body), 4096):
        stream.blocking_write_and_flush(body[start:start + 4096])
    del stream
    OutgoingBody.finish(outgoing, None)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        method = request.method()
        body = b"" if isinstance(method, Method_Get) else read_body(request)
        answer = {
            "greeting": os.environ.get("GREETING", "Hello from Python!"),
            "method": type(method).__name__.removeprefix("Method_").upper(),
            "path": request.path_with_query() or "/",
            "body_bytes": len(body),
        }
        respond(response_out, 200, "application/json", json.dumps(answer).encode() + b"\n")
