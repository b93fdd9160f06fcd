//! `balance-manager` (seed scenario): `POST /update` adds `amount` to the
//! balance of `account` (kept in key-value storage, so it survives fresh
//! instances and restarts), records it with the audit logger at its
//! cluster-local URL, and answers the new balance. `GET /balance/ACCOUNT`
//! reads a balance.

use caps::kv;
use serde::Deserialize;
use wasip2::http::types::{IncomingRequest, Method, ResponseOutparam};

const AUDIT_LOGGER: &str = "http://audit-logger.default.svc.cluster.local/log";

struct BalanceManager;

#[derive(Deserialize)]
struct Update {
    account: String,
    /// Any JSON number with at most two decimals (money, kept exact as cents).
    amount: serde_json::Number,
    transaction_id: String,
    timestamp: Option<String>,
}

/// `cents` as a JSON number (`100`, `100.5`).
fn money(cents: i64) -> serde_json::Value {
    serde_json::from_str(&common::format_money(cents, false)).unwrap_or_default()
}

/// The balance of `account`, in cents (a balance kept in whole units by an
/// older version is read as such).
fn balance(bucket: &kv::Bucket, account: &str) -> Result<i64, String> {
    let read = |key: String| -> Result<Option<i64>, String> {
        match bucket.get(&key).map_err(|e| format!("{e:?}"))? {
            Some(raw) => String::from_utf8_lossy(&raw)
                .parse()
                .map(Some)
                .map_err(|_| "corrupt balance".to_string()),
            None => Ok(None),
        }
    };
    if let Some(cents) = read(format!("balance-cents:{account}"))? {
        return Ok(cents);
    }
    match read(format!("balance:{account}"))? {
        Some(units) => units
            .checked_mul(100)
            .ok_or_else(|| "balance overflow".to_string()),
        None => Ok(0),
    }
}

fn handle(request: &IncomingRequest) -> Result<(u16, String), String> {
    let (path, _) = common::path_and_query(request);
    let bucket = kv::open("").map_err(|e| format!("{e:?}"))?;
    match (request.method(), path.as_str()) {
        (Method::Post, "/update") => {
            let update: Update = serde_json::from_slice(&common::read_body(request))
                .map_err(|e| format!("invalid update: {e}"))?;
            let cents = common::parse_cents(&update.amount.to_string())?;
            let new_balance = balance(&bucket, &update.account)?
                .checked_add(cents)
                .ok_or("balance overflow")?;
            bucket
                .set(
                    &format!("balance-cents:{}", update.account),
                    new_balance.to_string().as_bytes(),
                )
                .map_err(|e| format!("{e:?}"))?;
            println!(
                "balance-manager: {} {} -> {} ({})",
                update.account,
                common::format_money(cents, true),
                common::format_money(new_balance, false),
                update.transaction_id
            );
            let timestamp = update.timestamp.unwrap_or_else(common::now_rfc3339);
            let entry = serde_json::json!({
                "transaction_id": update.transaction_id,
                "account": update.account,
                "amount": money(cents),
                "new_balance": money(new_balance),
                "timestamp": timestamp,
            });
            let (status, body) = common::fetch(
                "POST",
                AUDIT_LOGGER,
                &[("content-type", b"application/json")],
                entry.to_string().as_bytes(),
            )?;
            if status != 200 {
                return Err(format!(
                    "audit logger answered {status}: {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            Ok((
                200,
                serde_json::json!({
                    "status": "updated",
                    "account": update.account,
                    "new_balance": money(new_balance),
                    "transaction_id": update.transaction_id,
                    "timestamp": timestamp,
                })
                .to_string(),
            ))
        }
        (Method::Get, path) if path.starts_with("/balance/") => {
            let account = &path["/balance/".len()..];
            Ok((
                200,
                serde_json::json!({"account": account, "balance": money(balance(&bucket, account)?)})
                    .to_string(),
            ))
        }
        _ => Ok((404, r#"{"error": "no such route"}"#.to_string())),
    }
}

impl wasip2::exports::http::incoming_handler::Guest for BalanceManager {
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

wasip2::http::proxy::export!(BalanceManager);
