//! What a run's outputs say: whether the users add up, and when each step of the handoff
//! happened according to the sidecars' logs.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::SystemTime,
};

/// Log lines that mark the way from SIGTERM to the rest arriving at B: (name, pod, text).
const MILESTONES: [(&str, Pod, &str); 8] = [
    ("a_sigterm_logged", Pod::A, "shutdown: SIGTERM received"),
    ("a_drain_over", Pod::A, "shutdown 2/5"),
    ("a_interrupting", Pod::A, "shutdown 3/5"),
    ("a_published", Pod::A, "published job.interrupted"),
    ("a_streams_done", Pod::A, "shutdown 4/5"),
    ("a_closing", Pod::A, "shutdown 5/5"),
    ("a_complete", Pod::A, "shutdown: complete"),
    ("b_took_over", Pod::B, "took over a handed-off job"),
];

pub(super) fn milestone_names() -> impl Iterator<Item = &'static str> {
    MILESTONES.iter().map(|m| m.0)
}

#[derive(Clone, Copy)]
enum Pod {
    A,
    B,
}

/// None when A's app then B's sink received exactly `admins`, in order; otherwise what is wrong.
pub(super) fn exactness(admins: &[String], app_a: &[String], sink_b: &[String]) -> Option<String> {
    let together: Vec<&String> = app_a.iter().chain(sink_b).collect();
    if together.len() == admins.len() && together.iter().zip(admins).all(|(g, w)| *g == w) {
        return None;
    }
    let mut seen = HashMap::<&String, usize>::new();
    for id in &together {
        *seen.entry(id).or_default() += 1;
    }
    let twice = seen.values().filter(|&&n| n > 1).count();
    let lost = admins.iter().filter(|id| !seen.contains_key(id)).count();
    let wanted: HashSet<&String> = admins.iter().collect();
    let foreign = seen.keys().filter(|id| !wanted.contains(*id)).count();
    let first_wrong = together
        .iter()
        .zip(admins)
        .position(|(g, w)| *g != w)
        .map_or(String::new(), |i| {
            format!(", first out of place at #{}", i + 1)
        });
    Some(format!(
        "NOT EXACT: A's app {} + B's sink {} = {} users, want {}: {twice} twice, {lost} lost, \
         {foreign} not admins{first_wrong}",
        app_a.len(),
        sink_b.len(),
        together.len(),
        admins.len()
    ))
}

/// Milliseconds from `signalled` to the first log line of each milestone.
pub(super) fn timeline(
    a_log: &str,
    b_log: &str,
    signalled: SystemTime,
) -> BTreeMap<&'static str, f64> {
    let milestones = MILESTONES.iter().map(|&(name, pod, text)| {
        let log = match pod {
            Pod::A => a_log,
            Pod::B => b_log,
        };
        (name, log, text)
    });
    crate::timing::timeline(milestones, signalled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn exact_split_passes_and_others_say_why() {
        let admins = ids(&["a", "b", "c", "d"]);
        assert_eq!(
            exactness(&admins, &ids(&["a", "b"]), &ids(&["c", "d"])),
            None
        );
        assert_eq!(exactness(&admins, &[], &admins), None);
        let dup = exactness(&admins, &ids(&["a", "b"]), &ids(&["b", "c", "d"])).unwrap_or_default();
        assert!(dup.contains("1 twice, 0 lost"), "{dup}");
        let lost = exactness(&admins, &ids(&["a", "b"]), &ids(&["d"])).unwrap_or_default();
        assert!(lost.contains("0 twice, 1 lost"), "{lost}");
        let order = exactness(&admins, &ids(&["a", "c"]), &ids(&["b", "d"])).unwrap_or_default();
        assert!(order.contains("first out of place at #2"), "{order}");
    }
}
