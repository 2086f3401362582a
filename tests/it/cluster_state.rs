//! The shared state in Redis built alone, as the node builds it, with no node: two instances on
//! one throwaway redis-server, each with a census of its own and the receiving end of its
//! events. What Redis confirms must come out as `cluster::Event`s, and a node that stops
//! heart-beating must be reported lost by the other, with its members and channels.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use switchboard::cluster::{Census, Cluster, Event, Links, RedisSettings};
use switchboard::metrics::Metrics;
use tokio::sync::{Notify, mpsc};

/// How long a silent instance's share lives; heartbeats come four times per TTL.
const TTL: Duration = Duration::from_secs(2);
/// Longest wait for one event.
const WAIT: Duration = Duration::from_secs(10);

/// What an instance's node would report: fixed connections, settable channel counts.
#[derive(Default)]
struct FakeCensus {
    channels: Mutex<Vec<(Arc<str>, usize)>>,
}

impl Census for FakeCensus {
    fn connections(&self) -> usize {
        3
    }

    fn channel_counts(&self) -> Vec<(Arc<str>, usize)> {
        self.channels.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

/// One instance of the shared state, as a node named `node_id` builds it.
struct Instance {
    cluster: Cluster,
    events: mpsc::UnboundedReceiver<Event>,
    census: Arc<FakeCensus>,
}

impl Instance {
    fn start(redis: &RedisServer, node_id: &str) -> Self {
        let census = Arc::new(FakeCensus::default());
        let (events, receiver) = mpsc::unbounded_channel();
        let weak = Arc::downgrade(&census);
        let cluster = Cluster::redis(
            switchboard::bus::redis::pool(&redis.url()).expect("pool"),
            RedisSettings {
                prefix: "t_".into(),
                node_id: node_id.into(),
                ttl: TTL,
                max_per_user: 0,
            },
            Links {
                census: weak,
                events,
                beat_now: Arc::new(Notify::new()),
            },
            Metrics::new().expect("metrics").redis("state"),
        )
        .expect("starts");
        Self {
            cluster,
            events: receiver,
            census,
        }
    }

    /// A socket joins or leaves `channel`, as the node does it: the hub's count (here the
    /// census) and the queued write under one change guard, so a rewrite of the share sees
    /// either both or neither.
    fn socket(&self, channel: &str, joins: bool) {
        let _change = self.cluster.change();
        let name: Arc<str> = channel.into();
        let mut channels = self.census.channels.lock().expect("census");
        let count = match channels.iter_mut().find(|(c, _)| *c == name) {
            Some((_, count)) => count,
            None => {
                channels.push((name.clone(), 0));
                &mut channels.last_mut().expect("pushed").1
            }
        };
        if joins {
            *count += 1;
            self.cluster.subscribed(&name);
        } else {
            *count -= 1;
            self.cluster.unsubscribed(&name);
        }
        channels.retain(|(_, count)| *count > 0);
    }

    /// Waits for the first event `wanted` accepts, skipping the others; panics on timeout.
    async fn expect(&mut self, what: &str, wanted: impl Fn(&Event) -> bool) -> Event {
        let mut seen = self.until(what, wanted).await;
        seen.pop().expect("until returns the event it waited for")
    }

    /// Every event up to and including the first `last` accepts; panics on timeout.
    async fn until(&mut self, what: &str, last: impl Fn(&Event) -> bool) -> Vec<Event> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => {
                    let done = last(&event);
                    seen.push(event);
                    if done {
                        return seen;
                    }
                }
                Ok(None) => panic!("the event channel closed while waiting for {what}"),
                Err(_) => panic!("no {what} within {WAIT:?}: {seen:?}"),
            }
        }
    }

    /// Every event already reported, without waiting.
    fn drain(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            out.push(event);
        }
        out
    }
}

fn occupancy(channel: &'static str, occupied: bool) -> impl Fn(&Event) -> bool + Copy {
    move |event| matches!(event, Event::Occupancy { channel: c, occupied: o } if c == channel && *o == occupied)
}

fn member(user: &str) -> Arc<str> {
    format!(r#"{{"user_id":"{user}","user_info":{{"name":"{user}"}}}}"#).into()
}

#[tokio::test]
async fn occupancy_is_reported_once_across_instances() {
    let redis = RedisServer::start().await;
    let mut a = Instance::start(&redis, "a");
    let mut b = Instance::start(&redis, "b");
    a.socket("news", true);
    a.expect("news occupied on a", occupancy("news", true))
        .await;
    // Sockets on both, then none: whichever write takes the count to 0 reports it, once.
    b.socket("news", true);
    a.socket("news", false);
    b.socket("news", false);
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !seen.iter().any(occupancy("news", false)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never vacated: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen.extend(a.drain().into_iter().chain(b.drain()));
    }
    // A full heartbeat later on both, nothing else was reported about the channel.
    for instance in [&mut a, &mut b] {
        for _ in 0..2 {
            let beat = instance
                .until("a heartbeat", |e| matches!(e, Event::LiveNodes(_)))
                .await;
            seen.extend(beat);
        }
    }
    let changes = seen
        .iter()
        .filter(|e| matches!(e, Event::Occupancy { .. }))
        .count();
    assert_eq!(changes, 1, "only the vacated after the occupied: {seen:?}");
}

#[tokio::test]
async fn presence_changes_are_reported_after_redis_confirms_them() {
    let redis = RedisServer::start().await;
    let mut a = Instance::start(&redis, "a");
    let channel: Arc<str> = "presence-room.1".into();
    let socket: Arc<str> = "s1".into();
    let user: Arc<str> = "7".into();
    let joined = a
        .cluster
        .presence_join(&channel, &socket, &user, member("7"))
        .await
        .expect("joins");
    assert!(joined.first);
    assert_eq!(
        a.cluster.presence_leave(&channel, &socket),
        None,
        "Redis decides"
    );
    let left = a
        .expect("a presence leave", |e| matches!(e, Event::Presence { .. }))
        .await;
    let Event::Presence {
        channel: c,
        joined,
        member: m,
    } = left
    else {
        unreachable!()
    };
    assert_eq!((c.as_str(), joined), ("presence-room.1", false));
    assert_eq!(m.get(), &*member("7"));
}

#[tokio::test]
async fn a_silent_instance_is_swept_and_reported_lost_with_its_members() {
    let redis = RedisServer::start().await;
    let mut a = Instance::start(&redis, "a");
    let mut b = Instance::start(&redis, "b");
    b.expect("two live nodes", |e| matches!(e, Event::LiveNodes(2)))
        .await;
    let user: Arc<str> = "7".into();
    let channel: Arc<str> = "presence-room.1".into();
    a.cluster.connect(&user).await.expect("slot");
    a.socket(&channel, true);
    a.cluster
        .presence_join(&channel, &"s1".into(), &user, member("7"))
        .await
        .expect("joins");
    a.expect("a's channel occupied", occupancy("presence-room.1", true))
        .await;
    // Dropping the state stops its heartbeat, as a killed node's would.
    drop(a);
    // The beat that sweeps a reports what a took with it, then counts one live node.
    let swept = b
        .until("one live node", |e| matches!(e, Event::LiveNodes(1)))
        .await;
    let lost: Vec<_> = swept
        .iter()
        .filter_map(|e| match e {
            Event::NodeLost {
                node,
                user,
                sockets,
            } => Some((node.as_str(), user.as_str(), *sockets)),
            _ => None,
        })
        .collect();
    assert_eq!(lost, [("a", "7", 1)], "{swept:?}");
    assert!(
        swept.iter().any(
            |e| matches!(e, Event::Presence { channel: c, joined: false, member: m }
            if c == "presence-room.1" && m.get() == &*member("7"))
        ),
        "a's member left presence: {swept:?}"
    );
    assert!(
        swept.iter().any(occupancy("presence-room.1", false)),
        "a's channel vacated: {swept:?}"
    );
    // Swept once: the next beats report nothing more of a.
    let later = b
        .until("the next beat", |e| matches!(e, Event::LiveNodes(1)))
        .await;
    assert!(
        later.iter().all(|e| matches!(e, Event::LiveNodes(_))),
        "{later:?}"
    );
}
