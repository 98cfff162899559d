//! The dependency scheduler: which credential starts when.
//!
//! A credential starts as soon as its own dependencies allow, not when a whole
//! wave before it is done: a dependency on a credential of the same provider
//! instance is met when that credential's rotation ended rotated; one on another
//! instance as soon as the new value is promoted in Vault (what a dependent relies
//! on), even while the dependency still retires its old key or pushes to sinks. A
//! dependency that ended without rotating (and without promoting first) skips its
//! dependents.
//!
//! Two bounds apply: each instance's `concurrency` (credentials of it in flight)
//! and the run's `defaults.concurrency` (global [`Slots`]). A credential holds its
//! global slot only while it works: waiting for its instance's rate limiter
//! ([`without_slot`]) it gives the slot back, so another instance's credential can
//! use it, and takes it back (before any new credential starts) once its permit
//! came. Among credentials ready to start, the one with the longest estimated
//! chain of work behind it goes first (the critical path), then playbook order.
//!
//! Invariant: a credential starts only when each of its selected dependencies has
//! rotated or, for another instance's credential, promoted its new value.

use rustc_hash::FxHashMap;
use std::collections::BinaryHeap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use tokio::sync::Notify;

/// The run's global concurrency: at most `cap` credentials working at once.
/// Credentials coming back from a rate-limit wait take a free slot before a new
/// credential may start.
pub(crate) struct Slots {
    cap: usize,
    state: Mutex<SlotState>,
    /// Wakes the scheduler: a slot became free for a new credential.
    for_new: Notify,
    /// Wakes credentials waiting to take their slot back.
    for_return: Notify,
}

#[derive(Default)]
struct SlotState {
    in_use: usize,
    /// Credentials waiting to take their slot back: they go before new ones.
    returning: usize,
}

impl Slots {
    pub(crate) fn new(cap: usize) -> Slots {
        Slots {
            cap: cap.max(1),
            state: Mutex::new(SlotState::default()),
            for_new: Notify::new(),
            for_return: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new credential, if one is free and nobody is waiting to take
    /// theirs back.
    pub(crate) fn try_take_new(&self) -> bool {
        let mut s = self.lock();
        if s.in_use + s.returning < self.cap {
            s.in_use += 1;
            true
        } else {
            false
        }
    }

    /// Returns once a slot may be free for a new credential (check again with
    /// [`Slots::try_take_new`]).
    pub(crate) async fn freed(&self) {
        self.for_new.notified().await
    }

    fn release(&self) {
        let returning = {
            let mut s = self.lock();
            s.in_use = s.in_use.saturating_sub(1);
            s.returning
        };
        if returning > 0 {
            self.for_return.notify_waiters();
        }
        self.for_new.notify_one();
    }

    /// Takes a slot back after a wait, ahead of any new credential.
    async fn take_back(&self) {
        struct Waiting<'a>(&'a Slots, bool);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                if self.1 {
                    self.0.lock().returning -= 1;
                    self.0.for_new.notify_one();
                }
            }
        }
        self.lock().returning += 1;
        let mut waiting = Waiting(self, true);
        loop {
            let notified = self.for_return.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.lock();
                if s.in_use < self.cap {
                    s.in_use += 1;
                    s.returning -= 1;
                    waiting.1 = false;
                    return;
                }
            }
            notified.await;
        }
    }
}

/// One credential's work as the scheduler hands it to its instance's poller.
type Work<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;

/// The credentials in flight: one task per provider instance, on the runtime's
/// threads, each polling its instance's credentials as one set. Instances work
/// side by side on every thread; one instance's credentials stay on one task, so
/// its rate limiter's permits are taken, and its requests leave, in the order and
/// at the times the limiter gave them. (Each credential its own task was tried:
/// on two threads of a loaded machine one instance's requests left late and in
/// bunches, and the fit of the provider's bucket learned a rate too low; the nginx
/// and moving-window tests of `tests/it/rate_limits.rs` failed 6 of 8 times under
/// two busy loops.) Dropping it (the run dropped mid-way, as a crash) aborts every
/// poller, which drops its credentials' work at their next await.
pub(crate) struct Pollers<T> {
    jobs: Vec<Option<tokio::sync::mpsc::UnboundedSender<Work<T>>>>,
    tasks: tokio::task::JoinSet<()>,
    done_tx: tokio::sync::mpsc::UnboundedSender<T>,
    done: tokio::sync::mpsc::UnboundedReceiver<T>,
}

impl<T: Send + 'static> Pollers<T> {
    /// Pollers for instances `0..instances` (started at an instance's first credential).
    pub(crate) fn new(instances: usize) -> Pollers<T> {
        let (done_tx, done) = tokio::sync::mpsc::unbounded_channel();
        Pollers {
            jobs: (0..instances).map(|_| None).collect(),
            tasks: tokio::task::JoinSet::new(),
            done_tx,
            done,
        }
    }

    /// Starts `work` on `instance`'s poller.
    pub(crate) fn push(&mut self, instance: usize, work: impl Future<Output = T> + Send + 'static) {
        let jobs = self.jobs[instance].get_or_insert_with(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            self.tasks.spawn(poll_instance(rx, self.done_tx.clone()));
            tx
        });
        if jobs.send(Box::pin(work)).is_err() {
            // The poller is gone only after a panic, which `next` raises.
            tracing::error!("an instance's poller ended early");
        }
    }

    /// What the next credential to end returned (pending while none is in flight).
    /// A panic in a credential's work is raised here, as if it were polled here.
    /// Cancel safe.
    pub(crate) async fn next(&mut self) -> T {
        loop {
            tokio::select! {
                Some(done) = self.done.recv() => return done,
                Some(joined) = self.tasks.join_next() => {
                    if let Err(e) = joined
                        && e.is_panic()
                    {
                        std::panic::resume_unwind(e.into_panic());
                    }
                }
            }
        }
    }
}

/// One instance's poller: its credentials' work as one set, each result sent to
/// `done` as it ends; returns once the scheduler drops its sender and the set is
/// empty.
async fn poll_instance<T>(
    mut jobs: tokio::sync::mpsc::UnboundedReceiver<Work<T>>,
    done: tokio::sync::mpsc::UnboundedSender<T>,
) {
    let mut set = futures::stream::FuturesUnordered::new();
    loop {
        tokio::select! {
            job = jobs.recv() => match job {
                Some(work) => set.push(work),
                None => break,
            },
            Some(result) = futures::StreamExt::next(&mut set), if !set.is_empty() => {
                let _ = done.send(result);
            }
        }
    }
    while let Some(result) = futures::StreamExt::next(&mut set).await {
        let _ = done.send(result);
    }
}

/// The global slot one credential's task holds (a task-local, so the rate-limit
/// wait deep in a provider step can hand it back without the slot being passed
/// through every call).
pub(crate) struct Held {
    slots: Arc<Slots>,
    held: AtomicBool,
}

impl Held {
    /// A slot already taken from `slots` ([`Slots::try_take_new`]).
    pub(crate) fn new(slots: Arc<Slots>) -> Arc<Held> {
        Arc::new(Held {
            slots,
            held: AtomicBool::new(true),
        })
    }

    /// Gives the slot back if it is held; whether it was.
    pub(crate) fn release(&self) -> bool {
        let was = self.held.swap(false, Ordering::SeqCst);
        if was {
            self.slots.release();
        }
        was
    }

    async fn take_back(&self) {
        self.slots.take_back().await;
        self.held.store(true, Ordering::SeqCst);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release();
    }
}

tokio::task_local! {
    static HELD: Arc<Held>;
}

/// Runs `work` as the task holding `held`.
pub(crate) async fn holding<F: Future>(held: Arc<Held>, work: F) -> F::Output {
    HELD.scope(held, work).await
}

/// Awaits `wait` (a rate-limit permit) without holding the task's global slot
/// when it does not complete at once: the slot is given back meanwhile and taken
/// back, ahead of new credentials, once `wait` completes. Outside a scheduled task
/// (retirement after the grace period, rollback) it is a plain await.
pub(crate) async fn without_slot<F: Future>(wait: F) -> F::Output {
    let mut wait = std::pin::pin!(wait);
    if let Poll::Ready(v) = futures::poll!(wait.as_mut()) {
        return v;
    }
    let Ok(held) = HELD.try_with(Arc::clone) else {
        return wait.await;
    };
    let released = held.release();
    let v = wait.await;
    if released {
        held.take_back().await;
    }
    v
}

/// The selected credentials as a dependency graph, in positions `0..n` (plan
/// order: the waves flattened).
pub(crate) struct Graph {
    /// Position → index into the playbook's credentials.
    pub(crate) order: Vec<usize>,
    /// Index into the playbook's credentials → position.
    pub(crate) position: FxHashMap<usize, usize>,
    /// Position → its dependents: (position, met by promotion, met already).
    dependents: Vec<Vec<Edge>>,
    /// Position → how many of its dependencies are not met yet.
    unmet: Vec<u32>,
    /// Position → the first dependency that ended without rotating.
    pub(crate) failed_dependency: Vec<Option<usize>>,
    /// Position → estimated seconds of work from its start to the end of the
    /// longest chain of dependents behind it.
    priority: Vec<f64>,
}

struct Edge {
    to: usize,
    /// The dependency is another instance's: promotion is enough.
    by_promotion: bool,
    met: bool,
}

impl Graph {
    /// `cost`: estimated seconds of one credential's rotation (by index).
    pub(crate) fn new(
        playbook: &crate::playbook::Playbook,
        waves: &[Vec<usize>],
        cost: impl Fn(usize) -> f64,
    ) -> Graph {
        let order: Vec<usize> = waves.iter().flatten().copied().collect();
        let position: FxHashMap<usize, usize> =
            order.iter().enumerate().map(|(p, &i)| (i, p)).collect();
        let by_id: FxHashMap<&str, usize> = order
            .iter()
            .enumerate()
            .map(|(p, &i)| (playbook.credentials[i].id.as_str(), p))
            .collect();
        let n = order.len();
        let mut dependents: Vec<Vec<Edge>> = (0..n).map(|_| Vec::new()).collect();
        let mut unmet = vec![0u32; n];
        for (p, &i) in order.iter().enumerate() {
            let credential = &playbook.credentials[i];
            for dep in &credential.depends_on {
                let Some(&d) = by_id.get(dep.as_str()) else {
                    continue;
                };
                if d == p {
                    continue;
                }
                unmet[p] += 1;
                dependents[d].push(Edge {
                    to: p,
                    by_promotion: playbook.credentials[order[d]].provider != credential.provider,
                    met: false,
                });
            }
        }
        // Waves are a topological order: dependents come later, so one backward
        // pass sees every dependent before its dependency.
        let mut priority = vec![0.0f64; n];
        for p in (0..n).rev() {
            let behind = dependents[p]
                .iter()
                .map(|e| priority[e.to])
                .fold(0.0, f64::max);
            priority[p] = cost(order[p]) + behind;
        }
        Graph {
            order,
            position,
            dependents,
            unmet,
            failed_dependency: vec![None; n],
            priority,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    /// Positions with nothing to wait for.
    pub(crate) fn roots(&self) -> Vec<usize> {
        (0..self.len()).filter(|&p| self.unmet[p] == 0).collect()
    }

    /// `p` promoted its new value: dependents on other instances may go. Returns
    /// those that have nothing left to wait for.
    pub(crate) fn promoted(&mut self, p: usize) -> Vec<usize> {
        let mut freed = Vec::new();
        for e in &mut self.dependents[p] {
            if e.by_promotion && !e.met {
                e.met = true;
                self.unmet[e.to] -= 1;
                if self.unmet[e.to] == 0 {
                    freed.push(e.to);
                }
            }
        }
        freed
    }

    /// `p` ended (`rotated` or not). Returns the dependents that have nothing left
    /// to wait for; those whose dependency failed carry it in `failed_dependency`.
    pub(crate) fn finished(&mut self, p: usize, rotated: bool) -> Vec<usize> {
        let mut freed = Vec::new();
        for e in &mut self.dependents[p] {
            if !rotated && self.failed_dependency[e.to].is_none() && self.unmet[e.to] > 0 {
                self.failed_dependency[e.to] = Some(p);
            }
            if !e.met {
                e.met = true;
                self.unmet[e.to] -= 1;
                if self.unmet[e.to] == 0 {
                    freed.push(e.to);
                }
            }
        }
        freed
    }
}

/// Ready credentials, per instance, the longest chain of work first.
pub(crate) struct Ready {
    per_instance: Vec<BinaryHeap<Rank>>,
}

#[derive(PartialEq)]
struct Rank {
    priority: f64,
    position: usize,
}

impl Eq for Rank {}

impl PartialOrd for Rank {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Rank {
    /// Larger priority first, then the earlier position.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.priority
            .total_cmp(&other.priority)
            .then_with(|| other.position.cmp(&self.position))
    }
}

impl Ready {
    pub(crate) fn new(instances: usize) -> Ready {
        Ready {
            per_instance: (0..instances).map(|_| BinaryHeap::new()).collect(),
        }
    }

    pub(crate) fn push(&mut self, graph: &Graph, instance: usize, p: usize) {
        self.per_instance[instance].push(Rank {
            priority: graph.priority[p],
            position: p,
        });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.per_instance.iter().all(BinaryHeap::is_empty)
    }

    /// The best ready credential among instances `may_start` allows.
    pub(crate) fn pop(&mut self, may_start: impl Fn(usize) -> bool) -> Option<usize> {
        let best = self
            .per_instance
            .iter()
            .enumerate()
            .filter(|(i, heap)| !heap.is_empty() && may_start(*i))
            .max_by(|a, b| a.1.peek().cmp(&b.1.peek()))
            .map(|(i, _)| i)?;
        self.per_instance[best].pop().map(|r| r.position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two instances' credentials each block their thread until the other has
    /// started: polled on one task, the first would wait its 5 s out alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instances_work_side_by_side_on_the_runtimes_threads() {
        let mut pollers = Pollers::new(2);
        let (a_started, a_seen) = std::sync::mpsc::channel();
        let (b_started, b_seen) = std::sync::mpsc::channel();
        let patience = std::time::Duration::from_secs(5);
        pollers.push(0, async move {
            a_started.send(()).unwrap();
            b_seen.recv_timeout(patience).is_ok()
        });
        pollers.push(1, async move {
            b_started.send(()).unwrap();
            a_seen.recv_timeout(patience).is_ok()
        });
        assert!(pollers.next().await, "instance 1 did not start meanwhile");
        assert!(pollers.next().await, "instance 0 did not start meanwhile");
    }

    /// A credential's work that panics stops the scheduler, as it did when the
    /// scheduler polled the work itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[should_panic(expected = "a provider bug")]
    async fn a_panic_in_a_credentials_work_reaches_the_scheduler() {
        let mut pollers = Pollers::<()>::new(1);
        pollers.push(0, async { panic!("a provider bug") });
        pollers.next().await;
    }

    /// Results come back from every instance, and an instance's later credentials
    /// go to the poller it already has.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_result_comes_back() {
        let mut pollers = Pollers::new(3);
        for i in 0..30usize {
            pollers.push(i % 3, async move {
                tokio::time::sleep(std::time::Duration::from_millis((i % 7) as u64)).await;
                i
            });
        }
        let mut got = Vec::new();
        for _ in 0..30 {
            got.push(pollers.next().await);
        }
        got.sort_unstable();
        assert_eq!(got, (0..30).collect::<Vec<_>>());
        assert_eq!(pollers.tasks.len(), 3, "one poller per instance");
    }

    #[tokio::test]
    async fn a_returning_credential_goes_before_a_new_one() {
        let slots = Arc::new(Slots::new(1));
        assert!(slots.try_take_new());
        let held = Held::new(slots.clone());
        assert!(held.release());
        assert!(slots.try_take_new(), "the released slot is free");
        let back = {
            let held = held.clone();
            tokio::spawn(async move { held.take_back().await })
        };
        tokio::task::yield_now().await;
        // Released by the new credential: the returning one takes it, not another.
        slots.release();
        back.await.unwrap();
        assert!(!slots.try_take_new());
        drop(held);
        assert!(slots.try_take_new());
    }

    #[tokio::test]
    async fn waiting_without_a_slot_frees_it_for_others() {
        let slots = Arc::new(Slots::new(1));
        assert!(slots.try_take_new());
        let held = Held::new(slots.clone());
        let gate = Arc::new(Notify::new());
        let task = {
            let gate = gate.clone();
            tokio::spawn(holding(held.clone(), async move {
                without_slot(gate.notified()).await;
            }))
        };
        tokio::task::yield_now().await;
        assert!(
            slots.try_take_new(),
            "the waiting credential gave its slot back"
        );
        gate.notify_one();
        tokio::task::yield_now().await;
        slots.release();
        task.await.unwrap();
        assert!(
            held.held.load(Ordering::SeqCst),
            "taken back after the wait"
        );
    }
}
