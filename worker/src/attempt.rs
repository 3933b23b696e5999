//! One attempt of a delivery job: the user's address read now (it may have changed since
//! the job was queued), the job's targets checked against their circuit breakers
//! ([`crate::breaker`]), the provider called for the targets admitted, and what the attempt
//! said about each target reported back to its breaker. A job whose every target is held
//! is not attempted at all: [`Attempt::Held`].

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Instant;

use tidings_shared::notify::{DeliveryChannel, DeliveryJob};
use tidings_shared::prefs::{Preferences, PushSubscription};

use crate::Ctx;
use crate::breaker::{Admitted, Health, Target};
use crate::error::Result;
use crate::provider::Outcome;
use crate::push::PushResult;
use crate::targets::missing;

/// What came of trying to attempt a job.
#[derive(Debug)]
pub enum Attempt {
    /// The provider was called (or the job cannot go out at all): the outcome, and the
    /// relay that took it.
    Tried(Outcome, Option<String>),
    /// Every target's breaker is open: nothing was sent; try again at this instant (ms
    /// since the epoch), spread a little.
    Held(i64),
}

/// What an outcome says about the target that produced it: an answer (even a refusal like a
/// 4xx, the receiver's decision) means it is up; a failure we would retry means it is not;
/// a failure of ours before reaching it (an invalid URL) says nothing.
pub fn health(outcome: &Outcome) -> Health {
    match outcome {
        Outcome::Delivered => Health::Up,
        Outcome::Retry { throttled: true, .. } | Outcome::Refused(_) => Health::Up,
        Outcome::Retry { error, .. } => Health::Down(error.clone()),
        Outcome::Fail(_) => Health::Unknown,
    }
}

/// Reports `health` to an admitted target's breaker. The attempt is made by now, so a
/// failure here is logged, never returned: the job must not be sent again because the
/// bookkeeping failed.
async fn report(ctx: &Ctx, admitted: &Admitted, health: Health) {
    if let Err(e) = ctx.breakers.report(admitted, health).await {
        tracing::warn!(error = %e, target = %admitted.target.display, "recording a breaker result failed");
    }
}

/// Counts the probes among `admitted`.
fn count_probes(ctx: &Ctx, channel: DeliveryChannel, admitted: &[Admitted]) {
    let probes = admitted.iter().filter(|a| a.probe).count() as u64;
    if probes > 0 {
        ctx.metrics
            .breaker_probes
            .with_label_values(&[channel.as_str()])
            .inc_by(probes);
    }
}

/// One attempt of `job`: to the user's current address, through the breakers.
pub async fn send(ctx: &Ctx, job: &DeliveryJob) -> Result<Attempt> {
    let started = Instant::now();
    let prefs = ctx.prefs.get(&job.user).await?;
    if let Some(lack) = missing(&prefs, job.channel) {
        return Ok(Attempt::Tried(Outcome::Fail(lack.to_owned()), None));
    }
    let attempt = match (job.channel, prefs) {
        (
            DeliveryChannel::Webhook,
            Preferences {
                webhook_url: Some(url), ..
            },
        ) => {
            let target = Target::of_url(DeliveryChannel::Webhook, &url);
            single(ctx, target, || ctx.webhook.send(&url, job)).await?
        }
        (DeliveryChannel::Email, Preferences { email: Some(to), .. }) => email(ctx, job, &to).await?,
        (DeliveryChannel::Sms, Preferences { phone: Some(to), .. }) => match &ctx.sms {
            None => Attempt::Tried(
                Outcome::Fail("SMS is not configured (TIDINGS_SMS_API_URL, _ACCOUNT_SID, _AUTH_TOKEN, _FROM)".into()),
                None,
            ),
            Some(sms) => {
                let target = Target::of_url(DeliveryChannel::Sms, sms.url());
                single(ctx, target, || sms.send(&to, &job.content.body)).await?
            }
        },
        (DeliveryChannel::Push, prefs) => push(ctx, job, prefs.push_subscriptions).await?,
        // In-app (every other channel's target was checked above).
        _ => Attempt::Tried(Outcome::Fail("in-app is not delivered through jobs".into()), None),
    };
    if matches!(attempt, Attempt::Tried(..)) {
        ctx.metrics
            .delivery_duration
            .with_label_values(&[job.channel.as_str()])
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(attempt)
}

/// A job with one target (a webhook origin, the SMS provider): `call` if its breaker lets
/// it (a target that cannot be named goes without a breaker: the call fails on its own).
async fn single<F, Fut>(ctx: &Ctx, target: Option<Target>, call: F) -> Result<Attempt>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Outcome>,
{
    let Some(target) = target else {
        return Ok(Attempt::Tried(call().await, None));
    };
    let admitted = match ctx.breakers.admit(&target, ctx.delivery_ack_wait).await? {
        Ok(a) => a,
        Err(until) => return Ok(Attempt::Held(ctx.breakers.wake_at(until))),
    };
    count_probes(ctx, target.channel, std::slice::from_ref(&admitted));
    let outcome = call().await;
    report(ctx, &admitted, health(&outcome)).await;
    Ok(Attempt::Tried(outcome, None))
}

/// Email: each relay has its breaker; the failover list skips the held ones, and the job
/// is held only when all are.
async fn email(ctx: &Ctx, job: &DeliveryJob, to: &str) -> Result<Attempt> {
    let targets: Vec<Target> = ctx
        .mailer
        .relay_names()
        .map(|name| Target::new(DeliveryChannel::Email, name))
        .collect();
    let gate = ctx.breakers.gate(&targets, ctx.delivery_ack_wait).await?;
    if gate.admitted.is_empty() {
        let until = gate.held_until_ms.unwrap_or_default();
        return Ok(Attempt::Held(ctx.breakers.wake_at(until)));
    }
    count_probes(ctx, DeliveryChannel::Email, &gate.admitted);
    let admitted_at = |i: usize| gate.admitted.iter().find(|a| targets.get(i) == Some(&a.target));
    let (outcome, via, tried) = ctx.mailer.send(to, job, |i| admitted_at(i).is_some()).await;
    let tried_at: Vec<usize> = tried.iter().map(|(i, _)| *i).collect();
    for (i, h) in tried {
        if let Some(a) = admitted_at(i) {
            report(ctx, a, h).await;
        }
    }
    // A probe of a relay left untried (an earlier one took the email) hands the probe on.
    for i in (0..targets.len()).filter(|i| !tried_at.contains(i)) {
        if let Some(a) = admitted_at(i).filter(|a| a.probe) {
            report(ctx, a, Health::Unknown).await;
        }
    }
    Ok(Attempt::Tried(outcome, via))
}

/// Push requests in flight at once for one job.
const PUSH_CONCURRENCY: usize = 8;

/// Push: each push service origin has its breaker. Sends to every subscription whose
/// service is admitted (at most `push_max_subscriptions`, the newest: a list written around
/// the API could be any length), several at once; those the service reports gone are
/// removed from the preferences. Delivered if any subscription took it (the others are not
/// retried, so no device gets it twice); else retried if any failure was transient; held
/// when every service's breaker is open.
async fn push(ctx: &Ctx, job: &DeliveryJob, mut subs: Vec<PushSubscription>) -> Result<Attempt> {
    if subs.len() > ctx.push_max_subscriptions {
        tracing::warn!(
            have = subs.len(),
            cap = ctx.push_max_subscriptions,
            "more push subscriptions than TIDINGS_PUSH_MAX_SUBSCRIPTIONS; sending to the newest"
        );
        subs.drain(..subs.len() - ctx.push_max_subscriptions);
    }
    // One breaker per service origin; a subscription whose endpoint does not parse goes
    // without one (it fails on its own).
    let origins: BTreeMap<String, Target> = subs
        .iter()
        .filter_map(|s| Target::of_url(DeliveryChannel::Push, &s.endpoint).map(|t| (t.key.clone(), t)))
        .collect();
    let targets: Vec<Target> = origins.into_values().collect();
    let gate = ctx.breakers.gate(&targets, ctx.delivery_ack_wait).await?;
    let admitted_for = |endpoint: &str| {
        Target::of_url(DeliveryChannel::Push, endpoint).map(|t| gate.admitted.iter().find(|a| a.target == t))
    };
    subs.retain(|s| !matches!(admitted_for(&s.endpoint), Some(None)));
    if subs.is_empty() {
        let until = gate.held_until_ms.unwrap_or_default();
        return Ok(Attempt::Held(ctx.breakers.wake_at(until)));
    }
    count_probes(ctx, DeliveryChannel::Push, &gate.admitted);
    let permits = tokio::sync::Semaphore::new(PUSH_CONCURRENCY);
    let sends = subs.iter().map(|sub| {
        let permits = &permits;
        async move {
            let _permit = permits.acquire().await;
            (sub, ctx.push.send(sub, job).await)
        }
    });
    let results = futures::future::join_all(sends).await;
    // Per service: up if any subscription there answered, else down if any failed so.
    let mut per_target: BTreeMap<String, Health> = BTreeMap::new();
    for (sub, result) in &results {
        let h = match result {
            PushResult::Gone => Health::Up,
            PushResult::Outcome(o) => health(o),
        };
        if let Some(Some(a)) = admitted_for(&sub.endpoint) {
            let slot = per_target.entry(a.target.key.clone()).or_insert(Health::Unknown);
            if h == Health::Up || *slot == Health::Unknown {
                *slot = h;
            }
        }
    }
    for a in &gate.admitted {
        let h = per_target.remove(&a.target.key).unwrap_or(Health::Unknown);
        report(ctx, a, h).await;
    }
    Ok(Attempt::Tried(fold_push(ctx, job, results).await?, None))
}

/// The outcome of a push job from each subscription's answer; removes the gone ones.
async fn fold_push(ctx: &Ctx, job: &DeliveryJob, results: Vec<(&PushSubscription, PushResult)>) -> Result<Outcome> {
    let mut gone = Vec::new();
    let mut delivered = false;
    let mut retry: Option<Outcome> = None;
    let mut errors = Vec::new();
    for (sub, result) in results {
        match result {
            PushResult::Gone => gone.push(sub.endpoint.clone()),
            PushResult::Outcome(Outcome::Delivered) => delivered = true,
            PushResult::Outcome(o @ Outcome::Retry { .. }) => retry = Some(o),
            PushResult::Outcome(Outcome::Fail(e) | Outcome::Refused(e)) => errors.push(e),
        }
    }
    if !gone.is_empty() {
        let mut prefs = ctx.store.preferences(&job.user).await?;
        prefs.push_subscriptions.retain(|s| !gone.contains(&s.endpoint));
        ctx.store.put_preferences(&job.user, &prefs).await?;
        tracing::info!(
            removed = gone.len(),
            "push subscriptions gone; removed from preferences"
        );
    }
    Ok(if delivered {
        Outcome::Delivered
    } else if let Some(r) = retry {
        r
    } else if errors.is_empty() {
        Outcome::Fail("every push subscription is gone (404/410)".into())
    } else {
        Outcome::Fail(errors.join("; "))
    })
}
