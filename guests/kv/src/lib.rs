//! `kv`: key-value storage and configuration over HTTP, for tests and as an
//! example of the capabilities. Routes: `GET /get/K`, `PUT /set/K` (body is
//! the value), `DELETE /delete/K`, `GET /exists/K`, `POST /incr/K?by=N`,
//! `GET /list`, `GET /config/K`, `GET /config`. Add `?bucket=NAME` to use a
//! shared bucket instead of the function's own.

use caps::{atomics, config, kv};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Kv;

fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

fn handle(request: &IncomingRequest) -> Result<(u16, Vec<u8>), String> {
    let (path, query) = common::path_and_query(request);
    let bucket_name = param(&query, "bucket").unwrap_or("");
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(2, '/').collect();
    let key = parts.get(1).copied().unwrap_or("");
    if parts[0] == "config" {
        return match key {
            "" => config::get_all()
                .map(|all| {
                    let lines: Vec<String> = all.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    (200, lines.join("\n").into_bytes())
                })
                .map_err(|e| format!("{e:?}")),
            key => match config::get(key).map_err(|e| format!("{e:?}"))? {
                Some(value) => Ok((200, value.into_bytes())),
                None => Ok((404, b"no such config key".to_vec())),
            },
        };
    }
    let bucket = kv::open(bucket_name).map_err(|e| format!("open: {e:?}"))?;
    let result = match parts[0] {
        "get" => match bucket.get(key) {
            Ok(Some(value)) => Ok((200, value)),
            Ok(None) => Ok((404, b"no such key".to_vec())),
            Err(e) => Err(e),
        },
        "set" => bucket
            .set(key, &common::read_body(request))
            .map(|()| (200, b"ok".to_vec())),
        "delete" => bucket.delete(key).map(|()| (200, b"ok".to_vec())),
        "exists" => bucket
            .exists(key)
            .map(|e| (200, e.to_string().into_bytes())),
        "incr" => {
            let by = param(&query, "by")
                .and_then(|b| b.parse().ok())
                .unwrap_or(1);
            atomics::increment(&bucket, key, by).map(|v| (200, v.to_string().into_bytes()))
        }
        "list" => bucket
            .list_keys(None)
            .map(|r| (200, r.keys.join("\n").into_bytes())),
        other => return Ok((404, format!("no route {other:?}").into_bytes())),
    };
    result.map_err(|e| format!("{e:?}"))
}

impl wasip2::exports::http::incoming_handler::Guest for Kv {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        match handle(&request) {
            Ok((status, body)) => common::respond(out, status, &[], &body),
            Err(error) => common::respond(out, 400, &[], format!("kv error: {error}").as_bytes()),
        }
    }
}

wasip2::http::proxy::export!(Kv);
