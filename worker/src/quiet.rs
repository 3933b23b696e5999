//! Quiet hours: whether a user's preferences hold a notification now, and until when,
//! computed in the user's IANA time zone from an instant the caller passes in (so tests can
//! use any clock).

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan as _, Zoned};
use tidings_shared::prefs::{Preferences, parse_hhmm};

/// The user's time zone (UTC when unset or unknown).
fn time_zone(prefs: &Preferences) -> TimeZone {
    prefs
        .timezone
        .as_deref()
        .and_then(|tz| TimeZone::get(tz).ok())
        .unwrap_or(TimeZone::UTC)
}

/// If `now` falls in the user's quiet hours, the instant they end.
pub fn until(prefs: &Preferences, now: Timestamp) -> Option<Timestamp> {
    let q = prefs.quiet_hours.as_ref()?;
    let (start, end) = (parse_hhmm(&q.start)?, parse_hhmm(&q.end)?);
    if start == end {
        return None;
    }
    let local: Zoned = now.to_zoned(time_zone(prefs));
    let t = local.time();
    let inside = if start < end {
        t >= start && t < end
    } else {
        t >= start || t < end
    };
    if !inside {
        return None;
    }
    // The end is today, unless the window spans midnight and we are before it.
    let end_date = if start > end && t >= start {
        local.date().checked_add(1.day()).ok()?
    } else {
        local.date()
    };
    let end_local = end_date.to_datetime(end);
    // A wall time skipped by a DST change resolves forward, as people expect. A wall time
    // that happens twice (clocks going back) is its first occurrence, unless `now` is
    // already past it (in the repeated hour): then the quiet hours end at the second.
    let ambiguous = time_zone(prefs).to_ambiguous_zoned(end_local);
    let first = ambiguous.clone().compatible().ok()?.timestamp();
    if first > now {
        return Some(first);
    }
    ambiguous.later().ok().map(|z| z.timestamp()).filter(|t| *t > now)
}

#[cfg(test)]
mod tests {
    use tidings_shared::prefs::QuietHours;

    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn prefs(tz: &str, start: &str, end: &str) -> Preferences {
        Preferences {
            timezone: Some(tz.into()),
            quiet_hours: Some(QuietHours {
                start: start.into(),
                end: end.into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn quiet_hours_across_midnight_in_new_york() {
        let p = prefs("America/New_York", "22:00", "07:00");
        // 23:30 EST on Jan 10 = 04:30 UTC Jan 11 → until 07:00 EST Jan 11 = 12:00 UTC.
        assert_eq!(until(&p, ts("2026-01-11T04:30:00Z")), Some(ts("2026-01-11T12:00:00Z")));
        // 05:00 EST (after midnight) → same morning.
        assert_eq!(until(&p, ts("2026-01-11T10:00:00Z")), Some(ts("2026-01-11T12:00:00Z")));
        // 07:00 sharp is no longer quiet; 21:59 is not yet.
        assert_eq!(until(&p, ts("2026-01-11T12:00:00Z")), None);
        assert_eq!(until(&p, ts("2026-01-11T02:59:00Z")), None);
        // Summer time (EDT, UTC-4): 23:00 EDT Jul 1 → 07:00 EDT Jul 2 = 11:00 UTC.
        assert_eq!(until(&p, ts("2026-07-02T03:00:00Z")), Some(ts("2026-07-02T11:00:00Z")));
        // The night the clocks go forward (Mar 8 2026, 02:00 → 03:00): still 07:00 local.
        assert_eq!(until(&p, ts("2026-03-08T05:00:00Z")), Some(ts("2026-03-08T11:00:00Z")));
    }

    #[test]
    fn quiet_hours_ending_in_the_repeated_hour_end_after_now() {
        // Paris, Oct 25 2026: 03:00 CEST goes back to 02:00 CET, so 02:00 to 03:00 happens
        // twice. At 02:00 CET (the second time, 01:00 UTC) quiet hours to 02:30 end at 02:30
        // CET (01:30 UTC), not at the first 02:30 (00:30 UTC), which is already past.
        // Found by the `preferences` fuzz target (fuzz/regressions/preferences/).
        let p = prefs("Europe/Paris", "01:00", "02:30");
        assert_eq!(until(&p, ts("2026-10-25T01:00:00Z")), Some(ts("2026-10-25T01:30:00Z")));
        // The first time through, the first 02:30.
        assert_eq!(until(&p, ts("2026-10-25T00:00:00Z")), Some(ts("2026-10-25T00:30:00Z")));
        // Across midnight, in New York (Nov 1 2026, 02:00 EDT back to 01:00 EST).
        let night = prefs("America/New_York", "23:00", "01:30");
        assert_eq!(
            until(&night, ts("2026-11-01T06:15:00Z")),
            Some(ts("2026-11-01T06:30:00Z"))
        );
    }

    #[test]
    fn quiet_hours_in_kolkata_half_hour_offset() {
        let p = prefs("Asia/Kolkata", "22:30", "06:15");
        // 23:00 IST (UTC+5:30) = 17:30 UTC → until 06:15 IST next day = 00:45 UTC.
        assert_eq!(until(&p, ts("2026-05-01T17:30:00Z")), Some(ts("2026-05-02T00:45:00Z")));
        // 12:00 IST: not quiet.
        assert_eq!(until(&p, ts("2026-05-01T06:30:00Z")), None);
        // Daytime window.
        let day = prefs("Asia/Kolkata", "13:00", "14:00");
        assert_eq!(
            until(&day, ts("2026-05-01T07:45:00Z")),
            Some(ts("2026-05-01T08:30:00Z"))
        );
    }
}
