// `js-hello`: an HTTP function in JavaScript (world `wasi:http/proxy`).
// Answers JSON with a greeting (to `?name=`, default "world"), the method
// and path it was called with, and the size of the request body.
//
// It exports `wasi:http/incoming-handler` itself, on the WASI types the
// server speaks, rather than using componentize-js's fetch-event support
// (built for its own WASI version).
import {
  Fields,
  OutgoingBody,
  OutgoingResponse,
  ResponseOutparam,
} from "wasi:http/types@0.2.12";

const encoder = new TextEncoder();

function bodySize(request) {
  const body = request.consume();
  const stream = body.stream();
  let size = 0;
  try {
    for (;;) {
      size += stream.blockingRead(65536n).length;
    }
  } catch (error) {
    if (error.payload?.tag !== "closed" && error.tag !== "closed") throw error;
  }
  stream[Symbol.dispose]();
  body[Symbol.dispose]();
  return size;
}

function respond(responseOut, status, contentType, bytes) {
  const headers = Fields.fromList([["content-type", encoder.encode(contentType)]]);
  const response = new OutgoingResponse(headers);
  response.setStatusCode(status);
  const body = response.body();
  ResponseOutparam.set(responseOut, { tag: "ok", val: response });
  const stream = body.write();
  for (let start = 0; start < bytes.length; start += 4096) {
    stream.blockingWriteAndFlush(bytes.subarray(start, start + 4096));
  }
  stream[Symbol.dispose]();
  OutgoingBody.finish(body, undefined);
}

export const incomingHandler = {
  handle(request, responseOut) {
    const target = request.pathWithQuery() ?? "/";
    const url = new URL(target, "http://localhost");
    const method = request.method();
    const answer = {
      greeting: `Hello, ${url.searchParams.get("name") ?? "world"}, from JavaScript!`,
      method: (method.tag === "other" ? method.val : method.tag).toUpperCase(),
      path: target,
      body_bytes: bodySize(request),
    };
    respond(responseOut, 200, "application/json", encoder.encode(JSON.stringify(answer) + "\n"));
  },
};
