//! What a recovery after a SIGKILL must deliver: at least once, never less. A's app received
//! an in-order prefix of the admins; the job's checkpoint at orphaning time is within that
//! prefix; B's sink received exactly the admins after the checkpoint. Whatever A's app got past
//! the checkpoint arrives twice (once at each pod): the duplicates a SIGKILL costs.

use std::collections::HashSet;

/// The duplicates when the run delivered every admin as it must; otherwise what is wrong.
pub fn at_least_once(
    admins: &[String],
    app_a: &[String],
    sink_b: &[String],
    checkpoint: &str,
) -> Result<usize, String> {
    let got: HashSet<&String> = app_a.iter().chain(sink_b).collect();
    let lost = admins.iter().filter(|id| !got.contains(id)).count();
    let lost = if lost > 0 {
        format!("LOST {lost} admin(s); ")
    } else {
        String::new()
    };
    if let Some(i) = first_difference(app_a, admins) {
        return Err(format!(
            "{lost}A's app: not the admins in order, first out of place at #{}",
            i + 1
        ));
    }
    let cut = admins
        .iter()
        .position(|id| id == checkpoint)
        .ok_or_else(|| format!("{lost}the checkpoint {checkpoint:?} is not an admin"))?
        + 1;
    if app_a.len() < cut {
        return Err(format!(
            "{lost}the checkpoint (#{cut}) is ahead of A's app ({} admins)",
            app_a.len()
        ));
    }
    let rest = &admins[cut..];
    if sink_b != rest {
        let at = first_difference(sink_b, rest).map_or_else(String::new, |i| {
            format!(", first out of place at #{}", i + 1)
        });
        return Err(format!(
            "{lost}B's sink: {} admins, want the {} after the checkpoint (#{cut}){at}",
            sink_b.len(),
            rest.len()
        ));
    }
    if !lost.is_empty() {
        // Unreachable when both checks above passed; kept so no loss can go unreported.
        return Err(lost);
    }
    Ok(app_a.len() - cut)
}

/// Where `got` first departs from `want` (`got` may be shorter than `want`, not longer).
fn first_difference(got: &[String], want: &[String]) -> Option<usize> {
    got.iter()
        .zip(want)
        .position(|(g, w)| g != w)
        .or_else(|| (got.len() > want.len()).then_some(want.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn past_the_checkpoint_counts_as_duplicates() {
        let admins = ids(&["a", "b", "c", "d", "e"]);
        let at = |a: &[&str], b: &[&str], cp| at_least_once(&admins, &ids(a), &ids(b), cp);
        assert_eq!(at(&["a", "b"], &["c", "d", "e"], "b"), Ok(0));
        assert_eq!(at(&["a", "b", "c", "d"], &["c", "d", "e"], "b"), Ok(2));
    }

    #[test]
    fn a_loss_or_a_wrong_sink_is_reported() {
        let admins = ids(&["a", "b", "c", "d", "e"]);
        let wrong = |a: &[&str], b: &[&str], cp| {
            at_least_once(&admins, &ids(a), &ids(b), cp).expect_err("a wrong delivery")
        };
        let ahead = wrong(&["a"], &["c", "d", "e"], "b");
        assert!(
            ahead.starts_with("LOST 1 admin(s)") && ahead.contains("ahead"),
            "{ahead}"
        );
        let short = wrong(&["a", "b"], &["c", "e"], "b");
        assert!(short.contains("LOST 1") && short.contains("#2"), "{short}");
        let again = wrong(&["a", "b"], &["b", "c", "d", "e"], "b");
        assert!(
            again.starts_with("B's sink: 4 admins, want the 3"),
            "{again}"
        );
        let order = wrong(&["b", "a"], &["c", "d", "e"], "b");
        assert!(order.contains("first out of place at #1"), "{order}");
        let foreign = wrong(&["a", "b"], &["c", "d", "e"], "z");
        assert!(foreign.contains("not an admin"), "{foreign}");
    }
}
