//! Small helpers for `wasi:http` guests: read a request body, send a response.

use std::io::{Read, Write};

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

/// Reads the whole request body.
pub fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let mut bytes = Vec::new();
    let body = request.consume().expect("request body is consumed once");
    {
        let mut stream = body.stream().expect("body stream is taken once");
        // A closed stream ends the read; the host reports errors as EOF here.
        let _ = stream.read_to_end(&mut bytes);
    }
    drop(body);
    bytes
}

/// Sends a complete response with the given status, headers and body.
pub fn respond(out: ResponseOutparam, status: u16, headers: &[(&str, &[u8])], body: &[u8]) {
    let fields = Fields::new();
    for (name, value) in headers {
        fields
            .append(name, value)
            .expect("guest-chosen headers are valid");
    }
    let response = OutgoingResponse::new(fields);
    response.set_status_code(status).expect("status is valid");
    let outgoing = response.body().expect("body is taken once");
    ResponseOutparam::set(out, Ok(response));
    write_all(&outgoing, body);
    OutgoingBody::finish(outgoing, None).expect("body finishes");
}

/// Writes all of `body` to an outgoing body (whose stream may be taken once).
pub fn write_all(outgoing: &OutgoingBody, body: &[u8]) {
    let mut stream = outgoing.write().expect("body stream is taken once");
    stream.write_all(body).expect("host accepts the body");
    stream.flush().expect("host accepts the body");
}
