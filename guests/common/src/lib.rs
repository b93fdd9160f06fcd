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

/// Sends an HTTP request from the guest and returns the status and body, or
/// the `wasi:http` error code as text.
pub fn fetch(
    method: &str,
    url: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{Method, OutgoingRequest, Scheme};

    let (scheme, rest) = match url.split_once("://") {
        Some(("http", rest)) => (Scheme::Http, rest),
        Some(("https", rest)) => (Scheme::Https, rest),
        _ => return Err(format!("unsupported URL {url:?}")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let fields = Fields::new();
    for (name, value) in headers {
        fields
            .append(name, value)
            .map_err(|e| format!("header {name}: {e:?}"))?;
    }
    let request = OutgoingRequest::new(fields);
    let method = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        other => Method::Other(other.to_string()),
    };
    request
        .set_method(&method)
        .map_err(|_| "bad method".to_string())?;
    request
        .set_scheme(Some(&scheme))
        .map_err(|_| "bad scheme".to_string())?;
    request
        .set_authority(Some(authority))
        .map_err(|_| "bad authority".to_string())?;
    request
        .set_path_with_query(Some(path))
        .map_err(|_| "bad path".to_string())?;
    let outgoing = request.body().expect("body is taken once");
    if !body.is_empty() {
        write_all(&outgoing, body);
    }
    OutgoingBody::finish(outgoing, None).map_err(|e| format!("{e:?}"))?;
    let future = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    future.subscribe().block();
    let response = future
        .get()
        .ok_or("no response")?
        .map_err(|()| "response taken twice".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let incoming = response
        .consume()
        .map_err(|()| "body taken twice".to_string())?;
    let mut bytes = Vec::new();
    {
        let mut stream = incoming
            .stream()
            .map_err(|()| "stream taken twice".to_string())?;
        let _ = stream.read_to_end(&mut bytes);
    }
    Ok((status, bytes))
}

/// The path and query of `request`, split.
pub fn path_and_query(request: &IncomingRequest) -> (String, String) {
    let full = request.path_with_query().unwrap_or_else(|| "/".to_string());
    match full.split_once('?') {
        Some((path, query)) => (path.to_string(), query.to_string()),
        None => (full, String::new()),
    }
}

/// The current UTC time as RFC 3339 (seconds precision).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Answers with a JSON body.
pub fn respond_json(out: ResponseOutparam, status: u16, body: &str) {
    respond(
        out,
        status,
        &[("content-type", b"application/json")],
        body.as_bytes(),
    );
}

/// An amount of money, exactly, in cents: from the decimal text of a JSON
/// number (`100`, `100.5`, `100.50`, `-0.25`; at most two decimals). A
/// JSON number read as `f64` prints back as its shortest decimal text, so
/// amounts of up to 15 significant digits arrive here as they were sent.
pub fn parse_cents(text: &str) -> Result<i64, String> {
    let invalid = || format!("amount {text} is not a decimal with at most two decimals");
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let fraction = fraction.trim_end_matches('0');
    if whole.is_empty()
        || fraction.len() > 2
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return Err(invalid());
    }
    let whole: i64 = whole.parse().map_err(|_| invalid())?;
    let fraction: i64 = format!("{fraction:0<2}").parse().map_err(|_| invalid())?;
    let cents = whole
        .checked_mul(100)
        .and_then(|c| c.checked_add(fraction))
        .ok_or_else(invalid)?;
    Ok(if negative { -cents } else { cents })
}

/// `cents` as decimal text: `100`, `100.50`, `-0.25` (with `signed`, a `+`
/// before a positive amount).
pub fn format_money(cents: i64, signed: bool) -> String {
    let sign = if cents < 0 {
        "-"
    } else if signed {
        "+"
    } else {
        ""
    };
    let (whole, fraction) = (cents.unsigned_abs() / 100, cents.unsigned_abs() % 100);
    if fraction == 0 {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{fraction:02}")
    }
}
