//! Schedules on the router: stored beside triggers and brokers, and fired
//! by one loop that sleeps until the next instant of any of them.
//!
//! Each schedule has a [`Mark`]: the instants up to `through` are done
//! (fired, or before the schedule was stored). At each wake the loop takes,
//! for every schedule, its last instant at or before now; if that is past
//! the mark, it posts that instant's event into the broker (as a client's
//! event, held to the backlog bound, and always de-duplicated) and then
//! records the mark. So instants missed while the server was down are
//! fired once, the last of them, at start; a crash between the post and the
//! mark fires that instant again at start, the same event (its id is the
//! instant), which the de-duplication window does not deliver twice.
//!
//! In cluster mode definitions and marks are in the `sluice_schedules`
//! bucket, every node watches it, and the node holding the bucket's
//! `leader` lease fires (renewed each second; another node takes it when
//! it has not been renewed for 3 s, and fires the last instant missed).
//! Two nodes that both believe they lead post the same events, which
//! JetStream's duplicate window stores once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sluice_store::StoreError;
use sluice_store::cluster::{Bucket, Expect};
use tokio::sync::Notify;

use super::{Origin, Router, Throttle};
use crate::schedule::Schedule;

/// Longest the loop sleeps without looking again (a clock that jumped, a
/// leader that went away).
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// How soon a firing that failed (backlog full, store down) is tried again.
const RETRY: Duration = Duration::from_secs(1);
/// How often a cluster node checks whether it leads (and the leader
/// renews its lease).
const LEASE_CHECK: Duration = Duration::from_secs(1);
/// Instants missed while up that are fired one by one (a stall, a slow
/// disk); past it only the last is.
const MAX_CATCH_UP: usize = 10;
/// How long the schedules' lease outlives its last renewal (ms).
const LEASE_MS: i64 = 3000;
/// The lease's key in the schedules bucket.
const LEADER_KEY: &str = "leader";

/// Who fires schedules in a cluster, until when (unix ms, its clock).
#[derive(Serialize, Deserialize)]
struct Lease {
    node: String,
    until: i64,
}

/// How far a schedule has fired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// Unix ms: instants up to here are done.
    pub through: i64,
    /// Unix ms of the last instant fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired: Option<i64>,
}

impl Mark {
    /// The last instant fired.
    pub fn last_fired(&self) -> Option<Timestamp> {
        self.fired
            .and_then(|ms| Timestamp::from_millisecond(ms).ok())
    }

    pub(super) fn to_json(self) -> Vec<u8> {
        serde_json::to_vec(&self).expect("JSON")
    }

    pub(super) fn parse(json: &[u8]) -> Option<Mark> {
        serde_json::from_slice(json).ok()
    }
}

/// The router's schedules.
#[derive(Default)]
pub(super) struct Schedules {
    defined: RwLock<BTreeMap<String, Arc<Schedule>>>,
    marks: Mutex<HashMap<String, Mark>>,
    pub(super) changed: Arc<Notify>,
    writes: tokio::sync::Mutex<()>,
    failures: Throttle,
}

impl Schedules {
    /// Schedules loaded from the embedded store; an invalid one is logged
    /// and skipped (a later version may have written it).
    pub(super) fn load(stored: Vec<sluice_store::StoredSchedule>) -> Schedules {
        let schedules = Schedules::default();
        for (definition, mark) in stored {
            match parse(&definition) {
                Ok(schedule) => {
                    let mark = mark.as_deref().and_then(Mark::parse).unwrap_or_default();
                    schedules.install(schedule, Some(mark));
                }
                Err(error) => {
                    tracing::error!(%error, "a stored schedule is invalid; ignored");
                }
            }
        }
        schedules
    }

    fn install(&self, schedule: Schedule, mark: Option<Mark>) {
        let name = schedule.name.clone();
        if let Some(mark) = mark {
            self.set_mark(&name, mark);
        }
        self.defined
            .write()
            .unwrap()
            .insert(name, Arc::new(schedule));
        self.changed.notify_one();
    }

    /// The triggers of the schedules with a function or URL sink.
    pub(super) fn direct_triggers(&self) -> Vec<crate::trigger::Trigger> {
        (self.defined.read().unwrap().values())
            .filter_map(|s| s.direct_trigger())
            .collect()
    }

    fn uninstall(&self, name: &str) {
        self.defined.write().unwrap().remove(name);
        self.marks.lock().unwrap().remove(name);
        self.changed.notify_one();
    }

    /// Keeps the later of the known mark and `mark`.
    fn set_mark(&self, name: &str, mark: Mark) {
        let mut marks = self.marks.lock().unwrap();
        let known = marks.entry(name.to_string()).or_default();
        if mark.through >= known.through {
            *known = mark;
        }
    }

    fn mark(&self, name: &str) -> Mark {
        self.marks
            .lock()
            .unwrap()
            .get(name)
            .copied()
            .unwrap_or_default()
    }
}

fn parse(json: &[u8]) -> Result<Schedule, String> {
    let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    Schedule::parse(&value, None).map_err(|e| format!("{}: {}", e.path, e.reason))
}

pub(super) fn definition_key(name: &str) -> String {
    format!("schedule.{name}")
}

pub(super) fn mark_key(name: &str) -> String {
    format!("mark.{name}")
}

impl Router {
    /// Stores a schedule (creating or replacing it), durably. Instants up
    /// to now are done: a new or changed schedule fires from its next
    /// instant. Returns true if it replaced one.
    pub async fn put_schedule(&self, schedule: Schedule) -> Result<bool, StoreError> {
        let _writing = self.schedules.writes.lock().await;
        let name = schedule.name.clone();
        let known = self.schedules.mark(&name);
        let mark = Mark {
            through: Timestamp::now().as_millisecond().max(known.through),
            fired: known.fired,
        };
        let json = serde_json::to_vec(&schedule.to_json()).expect("JSON");
        let direct = schedule.direct_trigger();
        match &self.cluster {
            Some(link) => {
                // The mark first: a node that sees the definition finds it.
                link.put(Bucket::Schedules, &mark_key(&name), mark.to_json())
                    .await?;
                let (replaced, revision) =
                    (link.put(Bucket::Schedules, &definition_key(&name), json)).await?;
                if link.seen(Bucket::Schedules, &definition_key(&name), revision) {
                    self.schedules.install(schedule, Some(mark));
                    self.sync_direct(&name, direct);
                }
                Ok(replaced)
            }
            None => {
                let replaced = (self.store)
                    .put_schedule(&name, &json, &mark.to_json())
                    .await?;
                self.schedules.install(schedule, Some(mark));
                self.sync_direct(&name, direct);
                Ok(replaced)
            }
        }
    }

    /// Installs `trigger`, the one of schedule `name`'s function or URL
    /// sink, or, with `None`, removes the schedule's (its pending
    /// deliveries then fail for good, as a deleted trigger's).
    fn sync_direct(&self, name: &str, trigger: Option<crate::trigger::Trigger>) {
        match trigger {
            Some(trigger) => self.install_trigger(trigger),
            None => {
                let direct = crate::schedule::direct_broker(name);
                if self.trigger(&direct).is_some() {
                    self.uninstall_trigger(&direct);
                }
            }
        }
    }

    /// Deletes a schedule, durably. Returns true if it existed.
    pub async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError> {
        let _writing = self.schedules.writes.lock().await;
        let existed = match &self.cluster {
            Some(link) => {
                let key = definition_key(name);
                let deleted = link.delete(Bucket::Schedules, &key).await?;
                link.delete(Bucket::Schedules, &mark_key(name)).await?;
                if deleted.is_none_or(|revision| link.seen(Bucket::Schedules, &key, revision)) {
                    self.schedules.uninstall(name);
                    self.sync_direct(name, None);
                }
                return Ok(deleted.is_some());
            }
            None => self.store.delete_schedule(name).await?,
        };
        self.schedules.uninstall(name);
        self.sync_direct(name, None);
        let _ = (self.metrics.schedule_firings).remove_label_values(&[name]);
        Ok(existed)
    }

    /// Every schedule, by name, with its mark.
    pub fn schedules(&self) -> Vec<(Arc<Schedule>, Mark)> {
        let defined = self.schedules.defined.read().unwrap();
        defined
            .values()
            .map(|s| (s.clone(), self.schedules.mark(&s.name)))
            .collect()
    }

    /// Schedule `name`, with its mark.
    pub fn schedule(&self, name: &str) -> Option<(Arc<Schedule>, Mark)> {
        let schedule = self.schedules.defined.read().unwrap().get(name).cloned()?;
        Some((schedule, self.schedules.mark(name)))
    }

    /// Applies a watched change of the cluster's schedules bucket.
    pub(super) fn apply_schedule_change(&self, key: &str, value: Option<bytes::Bytes>) {
        if let Some(name) = key.strip_prefix("mark.") {
            if let Some(mark) = value.as_deref().and_then(Mark::parse) {
                self.schedules.set_mark(name, mark);
            }
            return;
        }
        let Some(name) = key.strip_prefix("schedule.") else {
            return;
        };
        match value {
            Some(json) => match parse(&json) {
                Ok(schedule) => {
                    let direct = schedule.direct_trigger();
                    self.schedules.install(schedule, None);
                    self.sync_direct(name, direct);
                }
                Err(error) => {
                    tracing::error!(schedule = %name, %error, "a schedule in the catalog is invalid; ignored")
                }
            },
            None => {
                self.schedules.uninstall(name);
                self.sync_direct(name, None);
            }
        }
    }

    /// Fires schedules until the router stops or is dropped (it holds the
    /// router only while it fires). With no schedule it sleeps until one
    /// is stored.
    pub(super) async fn schedule_loop(router: std::sync::Weak<Router>) {
        // In cluster mode, not before the bucket is loaded (polled, so a
        // router stopped or dropped meanwhile is let go of).
        loop {
            let Some(this) = router.upgrade() else {
                return;
            };
            if this.stopping.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            match &this.cluster {
                Some(link) if !link.is_synced(Bucket::Schedules) => {}
                _ => break,
            }
            drop(this);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Instants missed before this node fires (the server was down, or
        // another node led) collapse into the last one.
        let mut fired_before = false;
        loop {
            let Some(this) = router.upgrade() else {
                return;
            };
            if this.stopping.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            let notify = this.schedules.changed.clone();
            let changed = notify.notified();
            let wait = if this.schedules.defined.read().unwrap().is_empty() {
                None
            } else if !this.leads_schedules().await {
                fired_before = false;
                Some(LEASE_CHECK)
            } else {
                let wait = this.fire_due(!fired_before).await;
                fired_before = true;
                Some(match this.cluster {
                    Some(_) => wait.min(LEASE_CHECK),
                    None => wait,
                })
            };
            drop(this);
            match wait {
                None => changed.await,
                Some(wait) => tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = changed => {}
                },
            }
        }
    }

    /// Whether this node fires schedules: always on one machine; in
    /// cluster mode, while it holds the lease at key `leader` of the
    /// schedules bucket (taken, compare-and-set, once its holder has not
    /// renewed it for [`LEASE_MS`]; renewed at each call).
    async fn leads_schedules(&self) -> bool {
        let Some(link) = &self.cluster else {
            return true;
        };
        let Ok(catalog) = link.cluster.catalog(Bucket::Schedules) else {
            return false;
        };
        let me = link.cluster.node_id();
        let now = Timestamp::now().as_millisecond();
        let expect = match catalog.get(LEADER_KEY).await {
            Err(_) => return false,
            Ok(None) => Expect::Absent,
            Ok(Some(current)) => match serde_json::from_slice::<Lease>(&current.value) {
                Ok(lease) if lease.node != me && lease.until > now => return false,
                _ => Expect::Revision(current.revision),
            },
        };
        let lease = Lease {
            node: me.to_string(),
            until: now + LEASE_MS,
        };
        let json = serde_json::to_vec(&lease).expect("JSON");
        catalog.put(LEADER_KEY, json.into(), expect).await.is_ok()
    }

    /// Fires each schedule's instants past its mark, in order: every one
    /// of them (at most [`MAX_CATCH_UP`]: past that, or when `collapse`,
    /// only the last); returns how long to sleep until the next instant of
    /// any.
    async fn fire_due(&self, collapse: bool) -> Duration {
        let now = Timestamp::now();
        let mut wake = MAX_SLEEP;
        for (schedule, mark) in self.schedules() {
            for due in due_instants(&schedule, mark.through, now, collapse) {
                if let Err(error) = self.fire(&schedule, due).await {
                    if let Some(since) = self.schedules.failures.allow(self.now_ms()) {
                        tracing::warn!(schedule = %schedule.name, instant = %due, %error, more_since_last_line = since, "a schedule could not fire; trying again");
                    }
                    wake = wake.min(RETRY);
                    break;
                }
            }
            if let Some(next) = schedule.next_after(now) {
                let until = next.as_millisecond().saturating_sub(now.as_millisecond());
                // A millisecond late, so the wake is never before the instant.
                wake = wake.min(Duration::from_millis(until.max(0) as u64 + 1));
            }
        }
        wake
    }

    /// Posts `schedule`'s event for `instant` and records the mark.
    async fn fire(&self, schedule: &Arc<Schedule>, instant: Timestamp) -> Result<(), String> {
        // One write at a time, held across the post: a schedule replaced
        // or deleted meanwhile does not fire its old definition after the
        // `PUT` or `DELETE` answered (nor is its mark set back).
        let _writing = self.schedules.writes.lock().await;
        let current = self
            .schedules
            .defined
            .read()
            .unwrap()
            .get(&schedule.name)
            .cloned();
        if !current.is_some_and(|c| Arc::ptr_eq(&c, schedule)) {
            return Ok(());
        }
        let ms = instant.as_millisecond();
        if self.schedules.mark(&schedule.name).through >= ms {
            return Ok(());
        }
        let event = schedule.event(instant);
        let accepted = (self.publish_bounded(&schedule.broker, vec![event], Origin::Schedule))
            .await
            .map_err(|e| e.to_string())?;
        let duplicate = !accepted.duplicates.is_empty();
        self.schedules.set_mark(
            &schedule.name,
            Mark {
                through: ms,
                fired: Some(ms),
            },
        );
        let mark = self.schedules.mark(&schedule.name);
        (self.metrics.schedule_firings)
            .with_label_values(&[schedule.name.as_str()])
            .inc();
        if duplicate {
            tracing::info!(schedule = %schedule.name, instant = %instant, "a schedule's firing was already accepted (a restart or a second node): not delivered again");
        }
        let stored = match &self.cluster {
            Some(link) => store_mark(link, &schedule.name, mark).await,
            None => {
                self.store
                    .mark_schedule(&schedule.name, &mark.to_json())
                    .await
            }
        };
        // Fired: a mark not recorded fires the instant again after a
        // restart, the same event, a duplicate.
        if let Err(error) = stored {
            tracing::warn!(schedule = %schedule.name, %error, "could not record a schedule's firing");
        }
        Ok(())
    }
}

/// Instants of `schedule` after `through` (Unix ms) up to `now`, oldest
/// first: all of them, or only the last when `collapse` or when there are
/// more than [`MAX_CATCH_UP`].
fn due_instants(
    schedule: &Schedule,
    through: i64,
    now: Timestamp,
    collapse: bool,
) -> Vec<Timestamp> {
    let Some(last) = schedule.latest_at_or_before(now) else {
        return Vec::new();
    };
    if last.as_millisecond() <= through {
        return Vec::new();
    }
    if collapse {
        return vec![last];
    }
    let mut due = Vec::new();
    let mut after = Timestamp::from_millisecond(through).unwrap_or(last);
    while let Some(next) = schedule.next_after(after) {
        if next > now {
            break;
        }
        if due.len() == MAX_CATCH_UP {
            tracing::warn!(schedule = %schedule.name, "a schedule fell more than {MAX_CATCH_UP} instants behind; firing only the last");
            return vec![last];
        }
        due.push(next);
        after = next;
    }
    due
}

/// Records `mark` in the cluster, only forward: a mark already further
/// (another node's, a replacement's) stays.
async fn store_mark(link: &super::cluster::Link, name: &str, mark: Mark) -> Result<(), StoreError> {
    let catalog = link.cluster.catalog(Bucket::Schedules)?;
    let key = mark_key(name);
    for _ in 0..8 {
        let current = catalog.get(&key).await?;
        let expect = match &current {
            Some(v) if Mark::parse(&v.value).is_some_and(|m| m.through >= mark.through) => {
                return Ok(());
            }
            Some(v) => Expect::Revision(v.revision),
            None => Expect::Absent,
        };
        match catalog.put(&key, mark.to_json().into(), expect).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Changed(_)) => continue,
            Err(error) => return Err(error),
        }
    }
    Err(StoreError::Changed(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_missed_while_up_are_all_fired_and_a_long_gap_collapses() {
        let every_second = Schedule::parse(
            &serde_json::json!({"schedule": "* * * * * *", "sink": {"broker": "b"}}),
            Some("s"),
        )
        .unwrap();
        let at = |s: &str| -> Timestamp { s.parse().unwrap() };
        let through = at("2026-12-03T10:00:00Z").as_millisecond();
        let now = at("2026-12-03T10:00:03.500Z");
        assert_eq!(
            due_instants(&every_second, through, now, false),
            [
                at("2026-12-03T10:00:01Z"),
                at("2026-12-03T10:00:02Z"),
                at("2026-12-03T10:00:03Z")
            ]
        );
        assert_eq!(
            due_instants(&every_second, through, now, true),
            [at("2026-12-03T10:00:03Z")]
        );
        let later = at("2026-12-03T10:05:00Z");
        assert_eq!(
            due_instants(&every_second, through, later, false),
            [later],
            "past the cap"
        );
        assert!(due_instants(&every_second, now.as_millisecond(), now, false).is_empty());
    }
}
