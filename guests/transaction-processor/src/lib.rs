//! `transaction-processor` (seed scenario): `POST /` with `{"account",
//! "amount"}` gives the transaction an id, asks the balance manager at its
//! cluster-local URL to apply it, and answers `{"status": "completed",
//! "transaction_id", "account", "amount", "new_balance", "timestamp"}`.

use caps::{atomics, kv};
use serde::Deserialize;
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

const BALANCE_MANAGER: &str = "http://balance-manager.default.svc.cluster.local/update";

struct TransactionProcessor;

/// `cents` as a JSON number (`100`, `100.5`).
fn money(cents: i64) -> serde_json::Value {
    serde_json::from_str(&common::format_money(cents, false)).unwrap_or_default()
}

#[derive(Deserialize)]
struct Transaction {
    account: String,
    /// Any JSON number with at most two decimals (money, kept exact as cents).
    amount: serde_json::Number,
}

fn handle(request: &IncomingRequest) -> Result<String, (u16, String)> {
    let tx: Transaction = serde_json::from_slice(&common::read_body(request))
        .map_err(|e| (400, format!("invalid transaction: {e}")))?;
    let cents = common::parse_cents(&tx.amount.to_string())
        .map_err(|e| (400, format!("invalid transaction: {e}")))?;
    let bucket = kv::open("").map_err(|e| (500, format!("{e:?}")))?;
    let seq =
        atomics::increment(&bucket, "transactions", 1).map_err(|e| (500, format!("{e:?}")))?;
    let transaction_id = format!("txn-{seq:06}");
    let timestamp = common::now_rfc3339();
    println!(
        "transaction-processor: {transaction_id}: {} {}",
        tx.account,
        common::format_money(cents, true)
    );
    let update = serde_json::json!({
        "account": tx.account,
        "amount": money(cents),
        "transaction_id": transaction_id,
        "timestamp": timestamp,
    });
    let (status, body) = common::fetch(
        "POST",
        BALANCE_MANAGER,
        &[("content-type", b"application/json")],
        update.to_string().as_bytes(),
    )
    .map_err(|e| (502, format!("balance manager unreachable: {e}")))?;
    if status != 200 {
        return Err((
            502,
            format!(
                "balance manager answered {status}: {}",
                String::from_utf8_lossy(&body)
            ),
        ));
    }
    let answer: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| (502, e.to_string()))?;
    Ok(serde_json::json!({
        "status": "completed",
        "transaction_id": transaction_id,
        "account": tx.account,
        "amount": money(cents),
        "new_balance": answer["new_balance"],
        "timestamp": timestamp,
    })
    .to_string())
}

impl wasip2::exports::http::incoming_handler::Guest for TransactionProcessor {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        match handle(&request) {
            Ok(body) => common::respond_json(out, 200, &body),
            Err((status, error)) => common::respond_json(
                out,
                status,
                &serde_json::json!({"status": "failed", "error": error}).to_string(),
            ),
        }
    }
}

wasip2::http::proxy::export!(TransactionProcessor);
