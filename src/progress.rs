//! Progress of a run on stderr: per provider instance bars with rate and ETA on a
//! terminal (indicatif), one plain line per finished credential otherwise.

use crate::engine::limits::InstanceLimit;
use crate::engine::{Outcome, Progress};
use indexmap::IndexMap;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::Write;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

/// Bars, one per provider instance, with the number of its selected credentials.
pub struct Bars {
    bars: IndexMap<String, ProgressBar>,
    /// Each instance's limit, to show the rate it sends at now and its 429s.
    limits: IndexMap<String, Arc<InstanceLimit>>,
    multi: MultiProgress,
    /// Operator prompts on the terminal now; bars are hidden while any is.
    prompts: Mutex<usize>,
}

impl Bars {
    pub fn new(
        counts: &IndexMap<String, u64>,
        limits: IndexMap<String, Arc<InstanceLimit>>,
    ) -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{prefix:>16} [{bar:30}] {pos}/{len} {rate:>9} ETA {eta:>4} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.1}/s", state.per_sec());
            },
        )
        .progress_chars("=> ");
        let bars = counts
            .iter()
            .map(|(instance, n)| {
                let bar = multi.add(ProgressBar::new(*n));
                bar.set_style(style.clone());
                bar.set_prefix(instance.clone());
                bar.enable_steady_tick(Duration::from_millis(250));
                (instance.clone(), bar)
            })
            .collect();
        Bars {
            bars,
            limits,
            multi,
            prompts: Mutex::new(0),
        }
    }
}

impl Progress for Bars {
    fn started(&self, instance: &str, credential: &str) {
        if let Some(bar) = self.bars.get(instance) {
            let limit = match self.limits.get(instance) {
                Some(l) => {
                    let s = l.stats();
                    let throttled = if s.rate_limited > 0 {
                        format!(", {} rate-limited", s.rate_limited)
                    } else {
                        String::new()
                    };
                    format!("(limit {:.1}/s{throttled}) ", s.final_per_second)
                }
                None => String::new(),
            };
            bar.set_message(format!("{limit}{credential}"));
        }
    }
    fn finished(&self, instance: &str, credential: &str, outcome: &Outcome) {
        if let Some(bar) = self.bars.get(instance) {
            bar.inc(1);
            if !matches!(outcome, Outcome::Rotated { .. }) {
                bar.println(format!("{credential}: {}", outcome.state()));
            }
            if bar.position() >= bar.length().unwrap_or(0) {
                bar.finish_with_message("done");
            }
        }
    }
    fn operator_prompt(&self, active: bool) {
        // Hidden rather than suspended: a suspended display would block every
        // other credential's progress update until the operator answers.
        let mut prompts = self.prompts.lock().unwrap_or_else(|e| e.into_inner());
        match (active, *prompts) {
            (true, 0) => self.multi.set_draw_target(ProgressDrawTarget::hidden()),
            (false, 1) => self.multi.set_draw_target(ProgressDrawTarget::stderr()),
            _ => {}
        }
        *prompts = if active {
            *prompts + 1
        } else {
            prompts.saturating_sub(1)
        };
    }
}

/// One line per finished credential, for logs and CI.
pub struct Lines {
    total: usize,
    done: Mutex<usize>,
}

impl Lines {
    pub fn new(total: usize) -> Lines {
        Lines {
            total,
            done: Mutex::new(0),
        }
    }
}

impl Progress for Lines {
    fn started(&self, _: &str, _: &str) {}
    fn finished(&self, instance: &str, credential: &str, outcome: &Outcome) {
        let n = {
            let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
            *done += 1;
            *done
        };
        let _ = writeln!(
            std::io::stderr(),
            "rekey: [{n}/{}] {credential} ({instance}): {}",
            self.total,
            outcome.state()
        );
    }
}
