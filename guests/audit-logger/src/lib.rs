//! `audit-logger` (seed scenario): `POST /log` stores an audit entry (JSON)
//! in key-value storage under an increasing number; `GET /entries` returns
//! every entry, oldest first.

use caps::{atomics, kv};
use wasip2::http::types::{IncomingRequest, Method, ResponseOutparam};

struct AuditLogger;

fn handle(request: &IncomingRequest) -> Result<(u16, String), String> {
    let (path, _) = common::path_and_query(request);
    let bucket = kv::open("").map_err(|e| format!("{e:?}"))?;
    match (request.method(), path.as_str()) {
        (Method::Post, "/log") => {
            let body = common::read_body(request);
            let entry: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| format!("invalid entry: {e}"))?;
            let seq = atomics::increment(&bucket, "seq", 1).map_err(|e| format!("{e:?}"))?;
            bucket
                .set(&format!("entry:{seq:010}"), entry.to_string().as_bytes())
                .map_err(|e| format!("{e:?}"))?;
            println!("audit-logger: logged entry {seq}: {entry}");
            Ok((
                200,
                serde_json::json!({"status": "logged", "entry": seq}).to_string(),
            ))
        }
        (Method::Get, "/entries") => {
            let mut entries = Vec::new();
            let mut cursor = None;
            loop {
                let page = bucket.list_keys(cursor).map_err(|e| format!("{e:?}"))?;
                for key in page.keys.iter().filter(|k| k.starts_with("entry:")) {
                    if let Some(raw) = bucket.get(key).map_err(|e| format!("{e:?}"))? {
                        entries.push(
                            serde_json::from_slice::<serde_json::Value>(&raw)
                                .map_err(|e| e.to_string())?,
                        );
                    }
                }
                match page.cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            Ok((200, serde_json::Value::Array(entries).to_string()))
        }
        _ => Ok((404, r#"{"error": "no such route"}"#.to_string())),
    }
}

impl wasip2::exports::http::incoming_handler::Guest for AuditLogger {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        match handle(&request) {
            Ok((status, body)) => common::respond_json(out, status, &body),
            Err(error) => common::respond_json(
                out,
                400,
                &serde_json::json!({"status": "error", "error": error}).to_string(),
            ),
        }
    }
}

wasip2::http::proxy::export!(AuditLogger);
