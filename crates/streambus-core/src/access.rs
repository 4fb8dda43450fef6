//! [`Access`]: what one session may do, and [`Quota`]: the limits its identity shares
//! with its other sessions.
//!
//! A transport that authenticates its clients (the gRPC server with `[auth]` on) opens
//! each session with [`crate::ConnectOptions::access`]. A session without one may do
//! anything (the embedded bus, or a server with authentication off).
//!
//! ```
//! use streambus_core::{Access, Rules};
//!
//! let rules = Rules { allow: vec!["sensors.{name}.>".into()], deny: vec![] };
//! let access = Access::new("dev1", &rules, &Rules::default(), &[], None).unwrap();
//! assert!(access.may_publish(&"sensors.dev1.temp".parse().unwrap()));
//! assert!(!access.may_publish(&"sensors.dev2.temp".parse().unwrap()));
//! ```
//!
//! # Cost on the hot path
//!
//! A publish checks each message's topic. Decisions are cached per session and topic
//! (bounded: the cache starts again when it holds [`DECISION_CACHE`] topics), a batch
//! checks each run of one topic once, and the last decision is kept aside, so a device
//! publishing to one topic pays a string comparison per batch and one to its few
//! topics a hash lookup. A denial is logged at WARN once per cached decision, with the
//! identity and the topic.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use streambus_types::config::{QuotaAction, QuotaConfig, Rules};
use streambus_types::{Message, Topic, TopicError, TopicFilter};
use tokio::time::Instant;

use crate::error::BusError;

/// Topics whose decision one session remembers.
pub const DECISION_CACHE: usize = 1024;

/// Allow and deny filters with the identity filled in.
#[derive(Debug, Clone)]
struct RuleSet {
    allow: Vec<TopicFilter>,
    deny: Vec<TopicFilter>,
}

impl RuleSet {
    fn new(rules: &[&Rules], name: &str) -> Result<RuleSet, TopicError> {
        let fill = |list: &mut Vec<TopicFilter>, entries: &[String]| -> Result<(), TopicError> {
            for entry in entries {
                list.push(TopicFilter::new(&entry.replace("{name}", name))?);
            }
            Ok(())
        };
        let mut set = RuleSet {
            allow: Vec::new(),
            deny: Vec::new(),
        };
        for r in rules {
            fill(&mut set.allow, &r.allow)?;
            fill(&mut set.deny, &r.deny)?;
        }
        Ok(set)
    }

    /// A concrete topic: some allow entry matches it and no deny entry does.
    fn permits_topic(&self, topic: &Topic) -> bool {
        self.allow.iter().any(|f| f.matches(topic)) && !self.deny.iter().any(|f| f.matches(topic))
    }

    /// A subscription filter: some allow entry covers all of it and no deny entry
    /// touches any of it.
    fn permits_filter(&self, filter: &TopicFilter) -> bool {
        self.allow.iter().any(|f| f.covers(filter)) && !self.deny.iter().any(|f| f.overlaps(filter))
    }
}

/// What one session may do: its identity, publish and subscribe rules, queue groups and
/// its identity's [`Quota`].
#[derive(Debug)]
pub struct Access {
    identity: String,
    publish: RuleSet,
    subscribe: RuleSet,
    /// Queue groups it may join; `*` for any.
    queue_groups: Vec<String>,
    quota: Option<Arc<Quota>>,
    /// When the credentials stop being valid (a JWT's `exp`), if they do.
    expires_at: Option<std::time::SystemTime>,
    /// Publish decisions already made.
    decisions: Mutex<Decisions>,
}

/// A session's publish decisions: the last one (a device or a chat stream publishes to
/// the same topic again and again: a string comparison, no hashing), and the others by
/// topic.
#[derive(Debug, Default)]
struct Decisions {
    last: Option<(Topic, bool)>,
    by_topic: HashMap<Topic, bool>,
}

impl Access {
    /// The rights of `identity`: the union of several roles' publish and subscribe
    /// rules (`{name}` filled with the identity), the queue groups they name, and the
    /// quota shared by the identity's sessions. Fails when a filled rule is not a valid
    /// filter (an identity with a `.` or a wildcard in it, say).
    pub fn new(
        identity: &str,
        publish: &Rules,
        subscribe: &Rules,
        queue_groups: &[String],
        quota: Option<Arc<Quota>>,
    ) -> Result<Access, TopicError> {
        Access::of_roles(identity, &[publish], &[subscribe], queue_groups, quota)
    }

    /// Like [`Access::new`], with the rules of several roles.
    pub fn of_roles(
        identity: &str,
        publish: &[&Rules],
        subscribe: &[&Rules],
        queue_groups: &[String],
        quota: Option<Arc<Quota>>,
    ) -> Result<Access, TopicError> {
        Ok(Access {
            identity: identity.to_owned(),
            publish: RuleSet::new(publish, identity)?,
            subscribe: RuleSet::new(subscribe, identity)?,
            queue_groups: queue_groups.to_vec(),
            quota,
            expires_at: None,
            decisions: Mutex::new(Decisions::default()),
        })
    }

    /// These rights end at `at` (the transport ends the session then).
    pub fn expiring(mut self, at: std::time::SystemTime) -> Access {
        self.expires_at = Some(at);
        self
    }

    /// When these rights end, if they do.
    pub fn expires_at(&self) -> Option<std::time::SystemTime> {
        self.expires_at
    }

    /// The identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The identity's quota, if it has one.
    pub fn quota(&self) -> Option<&Arc<Quota>> {
        self.quota.as_ref()
    }

    /// Whether this session may publish to `topic` (cached).
    pub fn may_publish(&self, topic: &Topic) -> bool {
        let mut decisions = self.decisions.lock();
        if let Some((last, known)) = &decisions.last
            && last == topic
        {
            return *known;
        }
        let allowed = match decisions.by_topic.get(topic) {
            Some(&known) => known,
            None => {
                let allowed = self.publish.permits_topic(topic);
                if !allowed {
                    tracing::warn!(identity = %self.identity, topic = %topic, "publish denied");
                }
                if decisions.by_topic.len() >= DECISION_CACHE {
                    decisions.by_topic.clear();
                }
                decisions.by_topic.insert(topic.clone(), allowed);
                allowed
            }
        };
        decisions.last = Some((topic.clone(), allowed));
        allowed
    }

    /// Checks every topic of a batch: the first one denied refuses the whole batch
    /// (nothing of it is admitted).
    pub(crate) fn check_publish(&self, messages: &[Message]) -> Result<(), BusError> {
        let mut last: Option<&Topic> = None;
        for m in messages {
            if last == Some(&m.topic) {
                continue;
            }
            if !self.may_publish(&m.topic) {
                return Err(BusError::PermissionDenied(format!(
                    "{} may not publish to {}",
                    self.identity, m.topic
                )));
            }
            last = Some(&m.topic);
        }
        Ok(())
    }

    /// Checks a subscription: its filter, and its queue group if it names one.
    pub(crate) fn check_subscribe(&self, filter: &TopicFilter, queue_group: Option<&str>) -> Result<(), BusError> {
        if !self.subscribe.permits_filter(filter) {
            tracing::warn!(identity = %self.identity, filter = %filter, "subscribe denied");
            return Err(BusError::PermissionDenied(format!(
                "{} may not subscribe to {filter}",
                self.identity
            )));
        }
        if let Some(group) = queue_group
            && !self.queue_groups.iter().any(|g| g == "*" || g == group)
        {
            tracing::warn!(identity = %self.identity, filter = %filter, group, "queue group denied");
            return Err(BusError::PermissionDenied(format!(
                "{} may not join queue group {group:?}",
                self.identity
            )));
        }
        Ok(())
    }
}

/// A token bucket: `rate` per second, holding at most `burst`.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    /// Tokens now (negative: owed by publishers already let through to wait) and when
    /// they were counted.
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(rate: u64, burst: u64) -> Option<Bucket> {
        (rate > 0).then(|| {
            let burst = if burst == 0 { rate } else { burst } as f64;
            Bucket {
                rate: rate as f64,
                burst,
                state: Mutex::new((burst, Instant::now())),
            }
        })
    }

    /// Takes `n` tokens: `Ok(wait)` with how long the taker must wait before going on
    /// (zero when they were there), or, when `refuse`, `Err` without taking anything if
    /// they are not there now.
    fn take(&self, n: f64, refuse: bool) -> Result<Duration, ()> {
        let mut state = self.state.lock();
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(state.1).as_secs_f64();
        state.0 = (state.0 + elapsed * self.rate).min(self.burst);
        state.1 = now;
        if refuse && state.0 < n {
            return Err(());
        }
        state.0 -= n;
        Ok(if state.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-state.0 / self.rate)
        })
    }
}

/// The limits one identity's sessions share: message and byte rates (token buckets),
/// and how many sessions and subscriptions it may hold at once.
#[derive(Debug)]
pub struct Quota {
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
    action: QuotaAction,
    max_sessions: usize,
    max_subscriptions: usize,
    sessions: AtomicUsize,
    subscriptions: AtomicUsize,
    /// Publishes refused or held back by the rate, for snapshots and metrics.
    limited: AtomicUsize,
}

impl Quota {
    /// A quota as configured.
    pub fn new(config: &QuotaConfig) -> Quota {
        Quota {
            messages: Bucket::new(config.messages_per_second, config.burst_messages),
            bytes: Bucket::new(config.bytes_per_second, config.burst_bytes),
            action: config.when_exceeded,
            max_sessions: config.max_sessions,
            max_subscriptions: config.max_subscriptions,
            sessions: AtomicUsize::new(0),
            subscriptions: AtomicUsize::new(0),
            limited: AtomicUsize::new(0),
        }
    }

    /// Publishes refused or held back by the rate so far.
    pub fn limited(&self) -> usize {
        self.limited.load(Ordering::Relaxed)
    }

    /// Sessions open now.
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    /// Admits a batch of `messages` messages and `bytes` bytes: waits while the rate is
    /// exceeded (`wait`), or refuses it (`refuse`, or `never_wait` for a caller that
    /// must not be held).
    pub(crate) async fn admit(
        &self,
        identity: &str,
        messages: usize,
        bytes: usize,
        never_wait: bool,
    ) -> Result<(), BusError> {
        let refuse = never_wait || self.action == QuotaAction::Refuse;
        let mut wait = Duration::ZERO;
        if let Some(b) = &self.messages {
            if refuse && messages as f64 > b.burst {
                return Err(BusError::RateLimited(format!(
                    "{identity}: a batch of {messages} messages is larger than the burst of {}",
                    b.burst
                )));
            }
            match b.take(messages as f64, refuse) {
                Ok(w) => wait = wait.max(w),
                Err(()) => return Err(self.refused(identity, "messages")),
            }
        }
        if let Some(b) = &self.bytes {
            match b.take(bytes as f64, refuse) {
                Ok(w) => wait = wait.max(w),
                Err(()) => {
                    // Give back the messages taken for this batch.
                    if let Some(m) = &self.messages {
                        m.state.lock().0 += messages as f64;
                    }
                    return Err(self.refused(identity, "bytes"));
                }
            }
        }
        if !wait.is_zero() {
            self.limited.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    fn refused(&self, identity: &str, what: &str) -> BusError {
        self.limited.fetch_add(1, Ordering::Relaxed);
        BusError::RateLimited(format!("{identity} is over its rate of {what} per second"))
    }

    /// Takes a session slot, or says the identity holds its most.
    pub(crate) fn open_session(self: &Arc<Self>, identity: &str) -> Result<QuotaSlot, BusError> {
        QuotaSlot::take(self, &self.sessions, self.max_sessions).ok_or_else(|| {
            BusError::QuotaExceeded(format!("{identity} holds its most sessions ({})", self.max_sessions))
        })
    }

    /// Takes a subscription slot, or says the identity holds its most.
    pub(crate) fn subscribe(self: &Arc<Self>, identity: &str) -> Result<QuotaSlot, BusError> {
        QuotaSlot::take(self, &self.subscriptions, self.max_subscriptions).ok_or_else(|| {
            BusError::QuotaExceeded(format!(
                "{identity} holds its most subscriptions ({})",
                self.max_subscriptions
            ))
        })
    }
}

/// One session or subscription counted against a [`Quota`]; given back when dropped.
#[derive(Debug)]
pub(crate) struct QuotaSlot {
    quota: Arc<Quota>,
    session: bool,
}

impl QuotaSlot {
    fn take(quota: &Arc<Quota>, counter: &AtomicUsize, max: usize) -> Option<QuotaSlot> {
        let taken = counter.fetch_add(1, Ordering::AcqRel);
        if max > 0 && taken >= max {
            counter.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(QuotaSlot {
            quota: quota.clone(),
            session: std::ptr::eq(counter, &quota.sessions),
        })
    }
}

impl Drop for QuotaSlot {
    fn drop(&mut self) {
        let counter = if self.session {
            &self.quota.sessions
        } else {
            &self.quota.subscriptions
        };
        counter.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> Rules {
        Rules {
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
            deny: deny.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    fn f(s: &str) -> TopicFilter {
        TopicFilter::new(s).unwrap()
    }

    /// `{name}` is the identity; deny wins; system topics only when named; a filter must
    /// be covered by an allow entry and touch no deny entry.
    #[test]
    fn rules_decide() {
        let publish = rules(
            &["sensors.{name}.>", "other.>", "admin.>"],
            &["sensors.*.secret", "admin.>"],
        );
        let subscribe = rules(&["commands.{name}", "sensors.>", "$dlq.{name}"], &["sensors.*.secret"]);
        let a = Access::new("dev1", &publish, &subscribe, &["workers".into()], None).unwrap();
        assert!(a.may_publish(&t("sensors.dev1.temp")));
        assert!(a.may_publish(&t("other.x")));
        assert!(!a.may_publish(&t("sensors.dev1.secret")));
        assert!(!a.may_publish(&t("admin.reset")));
        assert!(!a.may_publish(&t("sensors.dev2.temp")));
        // Cached decisions answer the same.
        assert!(!a.may_publish(&t("sensors.dev1.secret")));
        assert!(a.check_subscribe(&f("commands.dev1"), None).is_ok());
        assert!(a.check_subscribe(&f("commands.dev2"), None).is_err());
        assert!(a.check_subscribe(&f("commands.*"), None).is_err(), "wider than allowed");
        assert!(a.check_subscribe(&f("sensors.dev2.temp"), None).is_ok());
        assert!(
            a.check_subscribe(&f("sensors.>"), None).is_err(),
            "touches a denied topic"
        );
        assert!(a.check_subscribe(&f("$dlq.dev1"), None).is_ok());
        assert!(a.check_subscribe(&f("sensors.dev2.temp"), Some("workers")).is_ok());
        assert!(a.check_subscribe(&f("sensors.dev2.temp"), Some("others")).is_err());
        let denied = a
            .check_publish(&[
                Message::new(t("sensors.dev1.temp"), "1"),
                Message::new(t("sensors.dev2.temp"), "2"),
            ])
            .unwrap_err();
        assert_eq!(denied.code(), streambus_types::ErrorCode::PermissionDenied);
        assert!(denied.to_string().contains("sensors.dev2.temp"), "{denied}");
        // `>` reaches no system topic; naming one does.
        let open = Access::new("x", &rules(&[">"], &[]), &rules(&[">", "$chat.>"], &[]), &[], None).unwrap();
        assert!(open.may_publish(&t("a.b")));
        assert!(!open.may_publish(&t("$dlq.pg")));
        assert!(open.check_subscribe(&f("$dlq.pg"), None).is_err());
        assert!(open.check_subscribe(&f("$chat.room"), None).is_ok());
        // An identity that would make a filter invalid is refused.
        assert!(Access::new("a.>", &publish, &subscribe, &[], None).is_err());
    }

    /// The cache is bounded: past its size it starts again and still answers right.
    #[test]
    fn decision_cache_is_bounded() {
        let a = Access::new("d", &rules(&["x.>"], &[]), &Rules::default(), &[], None).unwrap();
        for i in 0..(DECISION_CACHE * 3) {
            assert!(a.may_publish(&t(&format!("x.{i}"))));
            assert!(a.decisions.lock().by_topic.len() <= DECISION_CACHE);
        }
        assert!(!a.may_publish(&t("y.1")));
    }

    /// Refusing quotas refuse what the bucket does not hold, counting; sessions and
    /// subscriptions are slots given back on drop.
    #[tokio::test(start_paused = true)]
    async fn quotas_count() {
        let quota = Arc::new(Quota::new(&QuotaConfig {
            messages_per_second: 10,
            burst_messages: 5,
            when_exceeded: QuotaAction::Refuse,
            max_sessions: 2,
            ..QuotaConfig::default()
        }));
        for _ in 0..5 {
            quota.admit("d", 1, 10, false).await.unwrap();
        }
        assert!(matches!(
            quota.admit("d", 1, 10, false).await,
            Err(BusError::RateLimited(_))
        ));
        assert!(quota.admit("d", 6, 10, false).await.is_err(), "larger than the burst");
        tokio::time::advance(Duration::from_millis(200)).await;
        quota.admit("d", 2, 10, false).await.unwrap();
        assert!(quota.admit("d", 1, 10, false).await.is_err());
        let (a, b) = (quota.open_session("d").unwrap(), quota.open_session("d").unwrap());
        assert!(matches!(quota.open_session("d"), Err(BusError::QuotaExceeded(_))));
        drop(a);
        let _c = quota.open_session("d").unwrap();
        drop(b);
        assert_eq!(quota.sessions(), 1);
    }

    /// A waiting quota lets everything through, late: 30 messages at 10/s with a burst
    /// of 10 take two seconds (of paused, virtual time).
    #[tokio::test(start_paused = true)]
    async fn waiting_quota_holds_back() {
        let quota = Quota::new(&QuotaConfig {
            messages_per_second: 10,
            burst_messages: 10,
            ..QuotaConfig::default()
        });
        let start = Instant::now();
        for _ in 0..30 {
            quota.admit("d", 1, 1, false).await.unwrap();
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1900) && took <= Duration::from_millis(2100),
            "{took:?}"
        );
        assert!(quota.limited() >= 19);
    }
}
