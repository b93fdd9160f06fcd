//! Guest output, kept per function in a bounded ring; and the small
//! records of asynchronous invocations.
//!
//! `logs`: `<function>\0<seq>` (big-endian) → JSON [`LogLine`]. After each
//! append the oldest lines past the function's bound are removed, so a guest
//! that writes without end cannot fill the disk.

use serde::{Deserialize, Serialize};

use crate::{Result, Store};

/// One line (or one capped chunk) of guest output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Increasing across the server; the cursor for `since`.
    pub seq: u64,
    /// RFC 3339 time it was written.
    pub time: String,
    /// The invocation that wrote it.
    pub invocation: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The text.
    pub line: String,
}

fn prefix(function: &str) -> Vec<u8> {
    let mut key = function.as_bytes().to_vec();
    key.push(0);
    key
}

impl Store {
    /// Appends `lines` (invocation, stream, text) to `function`'s log, then
    /// drops its oldest lines beyond `keep`. Not flushed: logs are not
    /// acknowledged data.
    pub fn append_logs(
        &self,
        function: &str,
        lines: &[(&str, &str, &str)],
        keep: usize,
    ) -> Result<()> {
        let time = crate::now_rfc3339();
        let mut batch = sled::Batch::default();
        for (invocation, stream, text) in lines {
            // Ordering only: a crash may hand out a line's number again,
            // which at worst overwrites a line (logs are not acknowledged).
            let seq = self.db.generate_id()?;
            let mut key = prefix(function);
            key.extend_from_slice(&seq.to_be_bytes());
            let line = LogLine {
                seq,
                time: time.clone(),
                invocation: invocation.to_string(),
                stream: stream.to_string(),
                line: text.to_string(),
            };
            batch.insert(key, serde_json::to_vec(&line).expect("log lines serialize"));
        }
        self.logs.apply_batch(batch)?;
        let keys: Vec<sled::IVec> = self
            .logs
            .scan_prefix(prefix(function))
            .keys()
            .collect::<std::result::Result<_, _>>()?;
        if keys.len() > keep {
            let mut trim = sled::Batch::default();
            for key in &keys[..keys.len() - keep] {
                trim.remove(key);
            }
            self.logs.apply_batch(trim)?;
        }
        Ok(())
    }

    /// Up to `limit` lines of `function`'s log with `seq > since`, oldest first.
    pub fn logs(&self, function: &str, since: u64, limit: usize) -> Result<Vec<LogLine>> {
        let mut start = prefix(function);
        start.extend_from_slice(&since.saturating_add(1).to_be_bytes());
        let mut end = prefix(function);
        end.extend_from_slice(&[0xff; 9]);
        self.logs
            .range(start..end)
            .values()
            .take(limit)
            .map(|v| Ok(serde_json::from_slice(&v?)?))
            .collect()
    }

    /// Removes every log line of `function`.
    pub fn delete_logs(&self, function: &str) -> Result<()> {
        for key in self.logs.scan_prefix(prefix(function)).keys() {
            self.logs.remove(key?)?;
        }
        Ok(())
    }

    /// Stores asynchronous invocation `id` (creating or replacing), durably.
    pub async fn put_invocation(&self, id: &str, record: &[u8]) -> Result<()> {
        self.invocations.insert(id.as_bytes(), record)?;
        self.flush_grouped().await
    }

    /// Asynchronous invocation `id`.
    pub fn invocation(&self, id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.invocations.get(id.as_bytes())?.map(|v| v.to_vec()))
    }

    /// Calls `each` with every asynchronous invocation record, one at a
    /// time (they are not all read into memory at once).
    pub fn each_invocation(&self, mut each: impl FnMut(&[u8])) -> Result<()> {
        for value in self.invocations.iter().values() {
            each(&value?);
        }
        Ok(())
    }

    /// Removes asynchronous invocation `id`.
    pub fn delete_invocation(&self, id: &str) -> Result<()> {
        self.invocations.remove(id.as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_lines_per_function() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for i in 0..10 {
            let text = format!("line {i}");
            store
                .append_logs("a", &[("inv", "stdout", &text)], 4)
                .unwrap();
        }
        store
            .append_logs("ab", &[("x", "stderr", "other function")], 4)
            .unwrap();
        let lines = store.logs("a", 0, 100).unwrap();
        assert_eq!(
            lines.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
            ["line 6", "line 7", "line 8", "line 9"]
        );
        let after = store.logs("a", lines[1].seq, 100).unwrap();
        assert_eq!(after.len(), 2, "since is exclusive");
        assert_eq!(store.logs("a", 0, 1).unwrap().len(), 1);
        store.delete_logs("a").unwrap();
        assert!(store.logs("a", 0, 100).unwrap().is_empty());
        assert_eq!(store.logs("ab", 0, 100).unwrap().len(), 1);
    }
}
