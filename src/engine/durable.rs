//! Group commit for the journal: records are committed without a sync of their own,
//! and every journal call waits, before it returns, until a sync that started after
//! its commit has finished. One `fdatasync` of the WAL (and of the audit trail) then
//! covers every record the credentials in flight committed meanwhile, instead of
//! one sync per record: the journal stops being the bottleneck of a run, and an
//! intent is still on disk before the step it announces goes ahead.

use std::fs::File;
use std::sync::{Condvar, Mutex};

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
    files: Vec<File>,
    counters: Mutex<Counters>,
    done: Condvar,
}

impl GroupSync {
    pub fn new(files: Vec<File>) -> GroupSync {
        GroupSync {
            files,
            counters: Mutex::new(Counters::default()),
            done: Condvar::new(),
        }
    }

    /// Called right after a commit (under the journal's lock): its ticket.
    pub fn committed(&self) -> u64 {
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        c.committed += 1;
        c.committed
    }

    /// Returns once the record with `ticket` is on disk: syncs if nobody is, or
    /// waits for the sync in progress (and then syncs again if that one started
    /// before this record was committed).
    pub fn wait(&self, ticket: u64) -> Result<(), String> {
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(e) = &c.failed {
                return Err(e.clone());
            }
            if c.synced >= ticket {
                return Ok(());
            }
            if c.syncing {
                c = self.done.wait(c).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            c.syncing = true;
            let target = c.committed;
            drop(c);
            let result = self.files.iter().try_for_each(File::sync_data);
            c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
            c.syncing = false;
            match result {
                Ok(()) => c.synced = c.synced.max(target),
                Err(e) => c.failed = Some(format!("cannot sync the journal to disk: {e}")),
            }
            self.done.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn concurrent_commits_share_syncs_and_each_waits_for_one_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("wal")).unwrap();
        let sync = Arc::new(GroupSync::new(vec![file]));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let sync = sync.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let ticket = sync.committed();
                        sync.wait(ticket).unwrap();
                        let c = sync.counters.lock().unwrap();
                        assert!(c.synced >= ticket);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let c = sync.counters.lock().unwrap();
        assert_eq!((c.committed, c.synced), (400, 400));
    }
}
