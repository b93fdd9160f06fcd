//! Schedules (see `sluice_router::schedule`): each definition, by name, and
//! beside it the schedule's mark, what the scheduler last recorded of it
//! (how far it has fired). The router owns both formats.

use sled::Transactional as _;
use sled::transaction::ConflictableTransactionResult as Tx;

use crate::{Result, Store, StoreError};

/// A schedule's definition and its mark, as stored.
pub type StoredSchedule = (Vec<u8>, Option<Vec<u8>>);

impl Store {
    /// Stores schedule `name` (creating or replacing it) with its mark, in
    /// one write, durably. Returns true if it replaced one.
    pub async fn put_schedule(&self, name: &str, definition: &[u8], mark: &[u8]) -> Result<bool> {
        let old = (&self.schedules, &self.schedule_marks).transaction(
            |(schedules, marks)| -> Tx<_, StoreError> {
                marks.insert(name.as_bytes(), mark)?;
                Ok(schedules.insert(name.as_bytes(), definition)?)
            },
        )?;
        self.flush().await?;
        Ok(old.is_some())
    }

    /// Every schedule, ordered by name: its definition and its mark.
    pub fn schedules(&self) -> Result<Vec<StoredSchedule>> {
        self.schedules
            .iter()
            .map(|entry| {
                let (name, definition) = entry?;
                let mark = self.schedule_marks.get(&name)?.map(|m| m.to_vec());
                Ok((definition.to_vec(), mark))
            })
            .collect()
    }

    /// Records the mark of schedule `name`, durably, if it is still stored.
    pub async fn mark_schedule(&self, name: &str, mark: &[u8]) -> Result<()> {
        (&self.schedules, &self.schedule_marks).transaction(
            |(schedules, marks)| -> Tx<_, StoreError> {
                if schedules.get(name.as_bytes())?.is_some() {
                    marks.insert(name.as_bytes(), mark)?;
                }
                Ok(())
            },
        )?;
        self.flush().await
    }

    /// Deletes schedule `name` and its mark, durably. Returns true if it
    /// existed.
    pub async fn delete_schedule(&self, name: &str) -> Result<bool> {
        let old = (&self.schedules, &self.schedule_marks).transaction(
            |(schedules, marks)| -> Tx<_, StoreError> {
                marks.remove(name.as_bytes())?;
                Ok(schedules.remove(name.as_bytes())?)
            },
        )?;
        self.flush().await?;
        Ok(old.is_some())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_schedule_and_its_mark_are_kept_together_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = crate::Store::open(dir.path()).unwrap();
            assert!(!store.put_schedule("a", b"def-a", b"m1").await.unwrap());
            assert!(store.put_schedule("a", b"def-a2", b"m2").await.unwrap());
            store.put_schedule("b", b"def-b", b"m").await.unwrap();
            store.mark_schedule("a", b"m3").await.unwrap();
            assert!(store.delete_schedule("b").await.unwrap());
            // A mark for a schedule deleted meanwhile is not kept.
            store.mark_schedule("b", b"late").await.unwrap();
            assert!(!store.delete_schedule("b").await.unwrap());
        }
        let store = crate::open_when_free(dir.path()).unwrap();
        assert_eq!(
            store.schedules().unwrap(),
            vec![(b"def-a2".to_vec(), Some(b"m3".to_vec()))]
        );
        assert!(store.schedule_marks.get("b").unwrap().is_none());
    }
}
