//! Where a user can be reached: the channels a request without `channels` goes to, and
//! what a channel lacks in the user's preferences (one rule, for planning and for sending).

use tidings_shared::notify::DeliveryChannel;
use tidings_shared::prefs::Preferences;

/// Channels a request without `channels` goes to: in-app always (unless switched off), the
/// others where the user gave what they need.
pub fn default_channels(prefs: &Preferences) -> Vec<DeliveryChannel> {
    DeliveryChannel::ALL
        .into_iter()
        .filter(|c| missing(prefs, *c).is_none())
        .collect()
}

/// What the user lacks for `channel`, if anything.
pub fn missing(prefs: &Preferences, channel: DeliveryChannel) -> Option<&'static str> {
    match channel {
        DeliveryChannel::InApp => None,
        DeliveryChannel::Email => prefs.email.is_none().then_some("no email address in preferences"),
        DeliveryChannel::Sms => prefs.phone.is_none().then_some("no phone number in preferences"),
        DeliveryChannel::Push => prefs
            .push_subscriptions
            .is_empty()
            .then_some("no push subscription in preferences"),
        DeliveryChannel::Webhook => prefs.webhook_url.is_none().then_some("no webhook_url in preferences"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_app_always_then_the_channels_with_a_target_in_order() {
        let mut prefs = Preferences::default();
        assert_eq!(default_channels(&prefs), [DeliveryChannel::InApp]);
        prefs.webhook_url = Some("https://example.com/hook".into());
        prefs.email = Some("a@example.com".into());
        assert_eq!(
            default_channels(&prefs),
            [DeliveryChannel::InApp, DeliveryChannel::Email, DeliveryChannel::Webhook]
        );
        assert_eq!(
            missing(&prefs, DeliveryChannel::Sms),
            Some("no phone number in preferences")
        );
        assert_eq!(missing(&prefs, DeliveryChannel::Email), None);
    }
}
