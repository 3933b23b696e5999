//! User preferences as `PUT /api/v1/users/{user}/preferences` reads them (JSON into
//! [`Preferences`], then [`Preferences::validate`]), and the worker's quiet hours over them
//! ([`tidings_worker::quiet::until`]).

use jiff::{SignedDuration, Timestamp};
use tidings_shared::prefs::MAX_PUSH_SUBSCRIPTIONS;
use tidings_shared::prefs::{Preferences, is_e164, is_email, parse_hhmm, validate_target_url};

/// Days quiet hours are checked on, every 15 minutes: an ordinary day, and the days clocks
/// change in Europe and in North America (spring and autumn).
const DAYS: [&str; 5] = [
    "2026-06-15T00:00:00Z",
    "2026-03-08T00:00:00Z",
    "2026-03-29T00:00:00Z",
    "2026-10-25T00:00:00Z",
    "2026-11-01T00:00:00Z",
];

/// Preferences that validate hold what validation promises, survive being stored (JSON)
/// unchanged, and give quiet hours that end after the instant asked about, within a day.
pub fn preferences(data: &[u8]) {
    let Ok(prefs) = serde_json::from_slice::<Preferences>(data) else {
        return;
    };
    let strict = prefs.validate(false);
    let lax = prefs.validate(true);
    if strict.is_ok() {
        assert!(lax.is_ok(), "valid without private targets, invalid with them: {lax:?}");
    }
    if lax.is_err() {
        return;
    }
    assert!(prefs.email.as_deref().is_none_or(is_email));
    assert!(prefs.phone.as_deref().is_none_or(is_e164));
    assert!(prefs.push_subscriptions.len() <= MAX_PUSH_SUBSCRIPTIONS);
    if let Some(q) = &prefs.quiet_hours {
        assert!(parse_hhmm(&q.start).is_some() && parse_hhmm(&q.end).is_some());
    }
    if strict.is_ok() {
        if let Some(u) = &prefs.webhook_url {
            assert!(validate_target_url("webhook_url", u, false).is_ok());
        }
    }
    let stored = serde_json::to_vec(&prefs).expect("preferences serialise");
    let back: Preferences = serde_json::from_slice(&stored).expect("stored preferences read back");
    assert_eq!(back, prefs);
    assert_eq!(back.validate(true).is_ok(), lax.is_ok());
    if prefs.quiet_hours.is_some() {
        quiet_hours(&prefs);
    }
}

fn quiet_hours(prefs: &Preferences) {
    for day in DAYS {
        let start: Timestamp = day.parse().expect("a fixed instant");
        for step in 0..(4 * 26) {
            let now = start + SignedDuration::from_mins(15 * step);
            if let Some(end) = tidings_worker::quiet::until(prefs, now) {
                assert!(end > now, "quiet hours at {now} end at {end}, not after it");
                assert!(
                    end.duration_since(now) <= SignedDuration::from_hours(25),
                    "quiet hours at {now} end at {end}"
                );
            }
        }
    }
}
