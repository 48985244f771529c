//! Small value formatters. Times are epoch milliseconds compared with `now` from Redis `TIME`,
//! never with the local clock, which may disagree with the one that wrote them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

/// The first instant humantime cannot print (year 10000).
const RFC3339_END_MS: u64 = 253_402_300_800_000;

/// A duration the way `kubectl` prints ages: exact seconds while they matter, coarser as it
/// grows (`42s`, `90s`, `5m30s`, `45m`, `3h20m`, `20h`, `3d4h`, `12d`).
pub fn compact(ms: u64) -> String {
    let secs = ms / 1000;
    let (mins, hours, days) = (secs / 60, secs / 3600, secs / 86_400);
    let pair = |big: u64, big_unit: &str, small: u64, small_unit: &str| {
        if small == 0 {
            format!("{big}{big_unit}")
        } else {
            format!("{big}{big_unit}{small}{small_unit}")
        }
    };
    match secs {
        0..120 => format!("{secs}s"),
        120..600 => pair(mins, "m", secs % 60, "s"),
        600..10_800 => format!("{mins}m"),
        10_800..28_800 => pair(hours, "h", mins % 60, "m"),
        28_800..172_800 => format!("{hours}h"),
        172_800..691_200 => pair(days, "d", hours % 24, "h"),
        _ => format!("{days}d"),
    }
}

/// How long ago `at` was: `3s ago`. A time ahead of `now` counts as now.
pub fn ago(now: u64, at: u64) -> String {
    format!("{} ago", compact(now.saturating_sub(at)))
}

/// What is left of a lease: `7s`, or `expired`. Rounded up, so a live lease never reads `0s`.
pub fn remaining(now: u64, until: u64) -> String {
    if until <= now {
        "expired".to_owned()
    } else {
        compact((until - now).div_ceil(1000) * 1000)
    }
}

/// `2026-01-02T03:04:05.678Z`, or a note when the number is no printable date.
pub fn rfc3339(ms: u64) -> String {
    if ms >= RFC3339_END_MS {
        return "after year 9999".to_owned();
    }
    match UNIX_EPOCH.checked_add(Duration::from_millis(ms)) {
        Some(time) => humantime::format_rfc3339_millis(time).to_string(),
        None => "out of range".to_owned(),
    }
}

/// `text` with control characters escaped: job fields come from other processes, and a
/// newline or an escape sequence must not break a table or take over the terminal.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// At most `max` characters, the last one `…` when something was cut.
pub fn truncate(text: &str, max: usize) -> Cow<'_, str> {
    if text.chars().count() <= max {
        return Cow::Borrowed(text);
    }
    let kept: String = text.chars().take(max.saturating_sub(1)).collect();
    Cow::Owned(format!("{kept}…"))
}

/// Labels for gRPC method paths: `Service/Method` without the package where that names one
/// method among `methods`, the full path otherwise (two packages with the same service name,
/// or a path that is not `/package.Service/Method`).
pub fn method_labels<'a>(methods: impl IntoIterator<Item = &'a str>) -> HashMap<&'a str, String> {
    let mut fulls_by_short: HashMap<String, Vec<&'a str>> = HashMap::new();
    for full in methods {
        let short = short_method(full).unwrap_or_else(|| full.to_owned());
        let fulls = fulls_by_short.entry(short).or_default();
        if !fulls.contains(&full) {
            fulls.push(full);
        }
    }
    let mut labels = HashMap::new();
    for (short, fulls) in fulls_by_short {
        if let [full] = fulls[..] {
            labels.insert(full, short);
        } else {
            labels.extend(fulls.into_iter().map(|full| (full, full.to_owned())));
        }
    }
    labels
}

fn short_method(full: &str) -> Option<String> {
    let (service, method) = full.strip_prefix('/')?.split_once('/')?;
    let (_package, name) = service.rsplit_once('.')?;
    if name.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some(format!("{name}/{method}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_get_coarser_as_they_grow() {
        let cases = [
            (0, "0s"),
            (59_999, "59s"),
            (60_000, "60s"),
            (119_999, "119s"),
            (120_000, "2m"),
            (330_000, "5m30s"),
            (600_000, "10m"),
            (10_799_000, "179m"),
            (10_800_000, "3h"),
            (12_000_000, "3h20m"),
            (28_800_000, "8h"),
            (47 * 3_600_000, "47h"),
            (48 * 3_600_000, "2d"),
            (76 * 3_600_000, "3d4h"),
            (8 * 86_400_000, "8d"),
        ];
        for (ms, text) in cases {
            assert_eq!(compact(ms), text, "{ms} ms");
        }
        assert_eq!(compact(u64::MAX), format!("{}d", u64::MAX / 86_400_000));
    }

    #[test]
    fn ages_and_leases_read_against_now() {
        assert_eq!(ago(10_000, 7_000), "3s ago");
        assert_eq!(ago(10_000, 12_000), "0s ago");
        assert_eq!(remaining(10_000, 17_000), "7s");
        assert_eq!(remaining(10_000, 10_001), "1s");
        assert_eq!(remaining(10_000, 10_000), "expired");
        assert_eq!(remaining(10_000, 0), "expired");
    }

    #[test]
    fn timestamps_render_as_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_767_225_600_123), "2026-01-01T00:00:00.123Z");
        assert_eq!(rfc3339(RFC3339_END_MS - 1), "9999-12-31T23:59:59.999Z");
        // A corrupt but numeric timestamp must not panic the formatter.
        assert_eq!(rfc3339(RFC3339_END_MS), "after year 9999");
        assert_eq!(rfc3339(u64::MAX), "after year 9999");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert!(matches!(printable("plain"), Cow::Borrowed("plain")));
        assert_eq!(printable("a\nb\u{1b}[2J"), "a\\nb\\u{1b}[2J");
    }

    #[test]
    fn long_text_is_cut_with_an_ellipsis() {
        assert_eq!(truncate("12345", 5), "12345");
        assert_eq!(truncate("123456", 5), "1234…");
        assert_eq!(truncate("ééééééé", 3), "éé…");
    }

    #[test]
    fn methods_are_shortened_only_when_unambiguous() {
        let labels = method_labels([
            "/demo.v1.Feed/Subscribe",
            "/demo.v1.Feed/Subscribe",
            "/demo.v1.Ticks/Watch",
            "/demo.v2.Ticks/Watch",
            "/Bare/Call",
            "not-a-path",
        ]);
        assert_eq!(labels["/demo.v1.Feed/Subscribe"], "Feed/Subscribe");
        assert_eq!(labels["/demo.v1.Ticks/Watch"], "/demo.v1.Ticks/Watch");
        assert_eq!(labels["/demo.v2.Ticks/Watch"], "/demo.v2.Ticks/Watch");
        assert_eq!(labels["/Bare/Call"], "/Bare/Call");
        assert_eq!(labels["not-a-path"], "not-a-path");
    }

    #[test]
    fn a_short_label_never_equals_another_full_path() {
        // "Feed/Subscribe" is not a path (no leading slash), but a method literally stored as
        // the short form of another one must not share its label.
        let labels = method_labels(["/pkg.Feed/Subscribe", "Feed/Subscribe"]);
        assert_ne!(labels["/pkg.Feed/Subscribe"], labels["Feed/Subscribe"]);
    }
}
