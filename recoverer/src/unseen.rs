//! Owners of running jobs that the pod store does not hold, remembered across reconcile passes.
//!
//! Absence from the store is not death: a pod without the selected label, in a namespace that
//! is not watched, or a sidecar whose `pod_name` is not its pod's name (a hostname fallback) is
//! invisible to the watch while it streams and renews its leases. Such owners are left to their
//! leases and reported, loudly but not repeatedly: an owner counts once it is unseen on two
//! passes in a row (a pod deleted between its watch event and a pass is not an unknown owner;
//! its signal orphans the jobs), and is logged at most once per [`REPORT_EVERY`].
//!
//! No I/O and no clock of its own, so the tests need no runtime.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

/// How often one unknown owner is logged again while it stays unknown.
pub const REPORT_EVERY: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
pub struct UnseenOwners {
    /// Owners unseen on the last pass.
    previous: BTreeSet<String>,
    /// When each owner was last logged.
    reported: HashMap<String, Instant>,
}

/// What one pass found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Findings {
    /// Owners unseen on this pass and the one before, in order.
    pub confirmed: Vec<String>,
    /// Those of them to log now.
    pub to_report: Vec<String>,
}

impl UnseenOwners {
    /// Takes the owners unseen on this pass (at `now`) and says which are confirmed and which
    /// to log. An owner seen again is forgotten, except for its rate limit.
    pub fn pass(&mut self, unseen: impl IntoIterator<Item = String>, now: Instant) -> Findings {
        let unseen: BTreeSet<String> = unseen.into_iter().collect();
        self.reported
            .retain(|_, at| now.saturating_duration_since(*at) < REPORT_EVERY);
        let mut findings = Findings::default();
        for owner in unseen.intersection(&self.previous) {
            findings.confirmed.push(owner.clone());
            if !self.reported.contains_key(owner) {
                self.reported.insert(owner.clone(), now);
                findings.to_report.push(owner.clone());
            }
        }
        self.previous = unseen;
        findings
    }

    /// No pod store to compare with (not synced, or no Kubernetes): nothing is unseen.
    pub fn clear(&mut self) {
        self.previous.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owners(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn an_owner_counts_once_unseen_on_two_passes_in_a_row() {
        let mut u = UnseenOwners::default();
        let t0 = Instant::now();
        assert_eq!(u.pass(owners(&["demo/a"]), t0), Findings::default());
        let second = u.pass(owners(&["demo/a", "demo/b"]), t0 + Duration::from_secs(5));
        assert_eq!(second.confirmed, ["demo/a"]);
        assert_eq!(second.to_report, ["demo/a"]);
        // Seen again in between: it starts over.
        assert!(u.pass(owners(&["demo/b"]), t0).to_report == ["demo/b"]);
        assert!(u.pass(owners(&["demo/a"]), t0).confirmed.is_empty());
    }

    #[test]
    fn each_owner_is_logged_at_most_once_per_interval() {
        let mut u = UnseenOwners::default();
        let t0 = Instant::now();
        u.pass(owners(&["a"]), t0);
        assert_eq!(u.pass(owners(&["a"]), t0).to_report, ["a"]);
        for s in 1..60 {
            let later = t0 + Duration::from_secs(s * 5) - Duration::from_millis(1);
            let f = u.pass(owners(&["a", "b"]), later);
            assert_eq!(f.confirmed.first().map(String::as_str), Some("a"));
            assert!(!f.to_report.contains(&"a".to_owned()), "pass {s}: {f:?}");
        }
        let f = u.pass(owners(&["a"]), t0 + REPORT_EVERY);
        assert_eq!(f.to_report, ["a"], "logged again after the interval");
    }

    #[test]
    fn a_flapping_owner_is_not_logged_more_often() {
        let mut u = UnseenOwners::default();
        let t0 = Instant::now();
        for i in 0..20u64 {
            let at = t0 + Duration::from_secs(i);
            let unseen = if i % 3 == 2 { vec![] } else { owners(&["a"]) };
            let f = u.pass(unseen, at);
            assert!(i == 1 || f.to_report.is_empty(), "pass {i}: {f:?}");
        }
    }

    #[test]
    fn clear_forgets_the_last_pass() {
        let mut u = UnseenOwners::default();
        let t0 = Instant::now();
        u.pass(owners(&["a"]), t0);
        u.clear();
        assert!(u.pass(owners(&["a"]), t0).confirmed.is_empty());
    }
}
