//! Group commit for the journal: records are committed without a sync of their own,
//! and a caller that needs its record on disk awaits, without blocking the runtime,
//! a sync that started after its commit. One sync then covers every record the
//! credentials in flight committed meanwhile, instead of one sync per record: the
//! journal stops being the bottleneck of a run, and an intent is still on disk
//! before the step it announces goes ahead.
//!
//! The files come in chains: each chain is synced in order (the audit trail before
//! its head record, so a power cut never leaves a head that counts lines the trail
//! lost), different chains at the same time on the blocking pool (the WAL beside
//! the trail), so a group costs the slowest chain, not the sum of every file. A
//! shared journal's chain is a flush of PostgreSQL instead (`SyncTarget::Flush`).

use crate::journal::SyncTarget;
use std::fs::File;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

#[derive(Default)]
struct Counters {
    /// Records committed (numbered in commit order).
    committed: u64,
    /// Every record up to this one is on disk.
    synced: u64,
    /// A caller is syncing now (the others wait for it, then maybe sync again).
    syncing: bool,
    /// The last sync failed: durability is unknown, every later call fails.
    failed: Option<String>,
}

pub struct GroupSync {
    chains: Vec<Chain>,
    counters: Mutex<Counters>,
    done: Notify,
}

/// One chain, synced as a unit on the blocking pool.
#[derive(Clone)]
enum Chain {
    Files(Arc<Vec<File>>),
    Flush(Arc<dyn Fn() -> Result<(), String> + Send + Sync>),
}

impl GroupSync {
    /// `chains`: files synced in order within a chain (or a database flush),
    /// chains side by side.
    pub fn new(chains: Vec<SyncTarget>) -> GroupSync {
        GroupSync {
            chains: chains
                .into_iter()
                .filter_map(|c| match c {
                    SyncTarget::Files(files) if files.is_empty() => None,
                    SyncTarget::Files(files) => Some(Chain::Files(Arc::new(files))),
                    SyncTarget::Flush(flush) => Some(Chain::Flush(flush)),
                })
                .collect(),
            counters: Mutex::new(Counters::default()),
            done: Notify::new(),
        }
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called right after a commit (under the journal's lock): its ticket.
    pub fn committed(&self) -> u64 {
        let mut c = self.counters();
        c.committed += 1;
        c.committed
    }

    /// Returns once the record with `ticket` is on disk: syncs if nobody is, or
    /// waits for the sync in progress (and then syncs again if that one started
    /// before this record was committed).
    pub async fn wait(&self, ticket: u64) -> Result<(), String> {
        loop {
            // Registered before the check, so a sync that ends in between still wakes us.
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            let target = {
                let mut c = self.counters();
                if let Some(e) = &c.failed {
                    return Err(e.clone());
                }
                if c.synced >= ticket {
                    return Ok(());
                }
                if c.syncing {
                    None
                } else {
                    c.syncing = true;
                    Some(c.committed)
                }
            };
            let Some(target) = target else {
                done.await;
                continue;
            };
            let result = self.sync_all().await;
            {
                let mut c = self.counters();
                c.syncing = false;
                match result {
                    Ok(()) => c.synced = c.synced.max(target),
                    Err(e) => c.failed = Some(format!("cannot sync the journal to disk: {e}")),
                }
            }
            self.done.notify_waiters();
        }
    }

    /// Syncs every chain, the chains side by side on the blocking pool.
    async fn sync_all(&self) -> Result<(), std::io::Error> {
        let syncs = self.chains.iter().map(|chain| {
            let chain = chain.clone();
            tokio::task::spawn_blocking(move || match chain {
                Chain::Files(files) => files.iter().try_for_each(File::sync_data),
                Chain::Flush(flush) => flush().map_err(std::io::Error::other),
            })
        });
        for joined in futures::future::join_all(syncs).await {
            joined.map_err(std::io::Error::other)??;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_share_syncs_and_each_waits_for_one_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| File::create(dir.path().join(name)).unwrap();
        let sync = Arc::new(GroupSync::new(vec![
            SyncTarget::Files(vec![file("trail"), file("head")]),
            SyncTarget::Files(vec![file("wal")]),
        ]));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let sync = sync.clone();
                tokio::spawn(async move {
                    for _ in 0..50 {
                        let ticket = sync.committed();
                        sync.wait(ticket).await.unwrap();
                        assert!(sync.counters().synced >= ticket);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let c = sync.counters();
        assert_eq!((c.committed, c.synced), (400, 400));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn waiting_does_not_block_other_tasks_on_the_same_thread() {
        // Several waiters in one task (as `join_all` polls credentials) all finish:
        // a wait yields instead of blocking the thread the others run on.
        let dir = tempfile::tempdir().unwrap();
        let sync = GroupSync::new(vec![SyncTarget::Files(vec![
            File::create(dir.path().join("wal")).unwrap(),
        ])]);
        let waits = (0..8).map(|_| {
            let ticket = sync.committed();
            sync.wait(ticket)
        });
        for r in futures::future::join_all(waits).await {
            r.unwrap();
        }
        assert_eq!(sync.counters().synced, 8);
    }
}
