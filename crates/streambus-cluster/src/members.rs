//! Who is in the cluster: every node says it is alive on `<prefix>-nodes.<node>` once
//! a second (its id as the payload) and listens to the others. A node not heard from
//! for [`GONE`] is taken as gone. This is presence for operators (the admin plane's
//! member list), not a consensus: nothing in delivery depends on it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;

use crate::Shared;

/// How often a node says it is alive.
const EVERY: Duration = Duration::from_secs(1);
/// Silence after which a node is taken as gone.
pub(crate) const GONE: Duration = Duration::from_secs(5);
/// Most nodes remembered (the subject is open to any NATS client; this bounds what a
/// stray publisher can make a node hold).
const MOST: usize = 10_000;

/// A node of the cluster as this node last heard of it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Member {
    /// Its name.
    pub node: String,
    /// Its id (name and incarnation).
    pub origin: String,
    /// Milliseconds since it was last heard from (0 for this node).
    pub last_seen_ms: u64,
}

/// The other nodes heard from: origin → (name, when).
pub(crate) type Roster = Arc<Mutex<HashMap<String, (String, Instant)>>>;

/// The subject prefix of presence for bus prefix `prefix`.
fn subject_prefix(prefix: &str) -> String {
    format!("{prefix}-nodes")
}

/// `node` as one subject token (a host name may hold dots).
fn token(node: &str) -> String {
    node.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The members now: this node first, then the others heard from within [`GONE`].
pub(crate) fn list(node: &str, origin: &str, roster: &Roster) -> Vec<Member> {
    let now = Instant::now();
    let mut others: Vec<Member> = roster
        .lock()
        .iter()
        .filter(|(_, (_, seen))| now.duration_since(*seen) < GONE)
        .map(|(origin, (node, seen))| Member {
            node: node.clone(),
            origin: origin.clone(),
            last_seen_ms: now.duration_since(*seen).as_millis() as u64,
        })
        .collect();
    others.sort_by(|a, b| a.node.cmp(&b.node).then(a.origin.cmp(&b.origin)));
    let mut all = vec![Member {
        node: node.to_owned(),
        origin: origin.to_owned(),
        last_seen_ms: 0,
    }];
    all.extend(others);
    all
}

/// Says this node is alive and listens to the others until `stop`.
pub(crate) async fn run(shared: Arc<Shared>, node: String, roster: Roster, mut stop: watch::Receiver<bool>) {
    let prefix = subject_prefix(&shared.config.subject_prefix);
    let own = format!("{prefix}.{}", token(&node));
    let mut heard = match shared.client.subscribe(format!("{prefix}.*")).await {
        Ok(sub) => sub,
        Err(e) => {
            tracing::error!(error = %e, "cluster: cannot listen for other nodes");
            return;
        }
    };
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let _ = shared.client.publish(own.clone(), shared.origin.as_bytes().to_vec().into()).await;
                let now = Instant::now();
                roster.lock().retain(|origin, (name, seen)| {
                    let alive = now.duration_since(*seen) < GONE * 4;
                    if !alive {
                        tracing::info!(node = %name, %origin, "cluster: node gone");
                    }
                    alive
                });
            }
            Some(message) = heard.next() => {
                let Ok(origin) = std::str::from_utf8(&message.payload) else { continue };
                let name = origin.rsplit_once('/').map(|(n, _)| n).unwrap_or(origin).to_owned();
                let mut roster = roster.lock();
                if roster.len() >= MOST && !roster.contains_key(origin) {
                    continue;
                }
                if roster.insert(origin.to_owned(), (name.clone(), Instant::now())).is_none() {
                    tracing::info!(node = %name, %origin, "cluster: node joined");
                }
            }
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_lists() {
        assert_eq!(token("edge-1.example.com"), "edge-1_example_com");
        assert_eq!(token("a*b>c"), "a_b_c");
        let roster: Roster = Arc::default();
        let now = Instant::now();
        roster.lock().insert("b/2".into(), ("b".into(), now));
        roster.lock().insert("z/9".into(), ("z".into(), now - GONE * 2));
        let members = list("a", "a/1", &roster);
        let names: Vec<&str> = members.iter().map(|m| m.node.as_str()).collect();
        assert_eq!(names, ["a", "b"], "a silent node is not listed");
    }
}
