//! One S3 store reached through several endpoints (gateways of one cluster, or load balancers):
//! every request attempt picks an endpoint by policy, endpoints that refuse connections are
//! skipped for a while, and each endpoint keeps its own counters.
//!
//! * `round_robin`: endpoints in turn.
//! * `least_outstanding`: the endpoint with the fewest requests in flight from this process
//!   (a request counts until its body has been read), ties broken in turn.
//!
//! An attempt that fails without an answer from the server (connection refused or reset: cause
//! `connection`) marks its endpoint down for 1 s, doubling up to 30 s while it keeps failing; the
//! retry loops then send the next attempt elsewhere. When every endpoint is down, the one that
//! comes back soonest is tried. One success puts an endpoint back.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;

use crate::error::{Error, Result};

/// How a request picks its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    RoundRobin,
    LeastOutstanding,
}

impl Policy {
    /// `"round_robin"` or `"least_outstanding"`.
    pub fn parse(name: &str) -> Result<Policy> {
        match name {
            "round_robin" => Ok(Policy::RoundRobin),
            "least_outstanding" => Ok(Policy::LeastOutstanding),
            other => Err(Error::invalid_config(format!(
                "endpoint_policy must be \"round_robin\" or \"least_outstanding\", got {other:?}"
            ))),
        }
    }
}

const FIRST_DOWN: Duration = Duration::from_secs(1);
const MAX_DOWN: Duration = Duration::from_secs(30);

struct Member {
    /// The endpoint URL, or `None` for the SDK's default (AWS) endpoint.
    url: Option<String>,
    client: Client,
    /// The same client with the SDK's retries off, for requests s3dlio retries itself (GETs and
    /// listings): built once, not overridden per request (a per-request config override rebuilds
    /// the SDK's runtime plugins on every call).
    single: Client,
    in_flight: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    /// Times it was marked down.
    downs: AtomicU64,
    down: Mutex<Down>,
}

#[derive(Default)]
struct Down {
    until: Option<Instant>,
    next: Duration,
}

/// The endpoints of one client configuration (shared by every backend built from it).
pub(crate) struct Endpoints {
    members: Vec<Member>,
    policy: Policy,
    turn: AtomicUsize,
}

/// Counters of one endpoint, as `s3dlio.stats()["endpoints"]` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStats {
    pub url: String,
    pub requests: u64,
    pub errors: u64,
    pub in_flight: u64,
    pub downs: u64,
    pub down: bool,
}

impl Endpoints {
    /// One member per `(url, client, single-attempt client)`; at least one.
    pub(crate) fn new(members: Vec<(Option<String>, Client, Client)>, policy: Policy) -> Endpoints {
        let members = members
            .into_iter()
            .map(|(url, client, single)| Member {
                url,
                client,
                single,
                in_flight: AtomicU64::new(0),
                requests: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                downs: AtomicU64::new(0),
                down: Mutex::new(Down::default()),
            })
            .collect();
        Endpoints { members, policy, turn: AtomicUsize::new(0) }
    }

    /// The endpoint for the next request attempt (counted in flight until the lease drops).
    pub(crate) fn lease(self: &Arc<Self>) -> Lease {
        let i = self.pick(Instant::now());
        let m = &self.members[i];
        m.in_flight.fetch_add(1, Ordering::Relaxed);
        m.requests.fetch_add(1, Ordering::Relaxed);
        Lease { set: Arc::clone(self), i }
    }

    fn down_until(&self, i: usize) -> Option<Instant> {
        self.members[i].down.lock().unwrap_or_else(|p| p.into_inner()).until
    }

    fn pick(&self, now: Instant) -> usize {
        let n = self.members.len();
        if n == 1 {
            return 0;
        }
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % n;
        let up = |i: &usize| self.down_until(*i).is_none_or(|t| t <= now);
        let order = (0..n).map(|k| (start + k) % n);
        let chosen = match self.policy {
            Policy::RoundRobin => order.clone().find(up),
            Policy::LeastOutstanding => {
                order.clone().filter(up).min_by_key(|&i| self.members[i].in_flight.load(Ordering::Relaxed))
            }
        };
        // Every endpoint down: the one back soonest.
        chosen.unwrap_or_else(|| order.min_by_key(|&i| self.down_until(i)).unwrap_or(0))
    }

    /// Every endpoint's counters; with `reset`, the counts (not what is in flight) start again.
    pub fn stats(&self, reset: bool) -> Vec<EndpointStats> {
        let now = Instant::now();
        let read =
            |a: &AtomicU64| if reset { a.swap(0, Ordering::Relaxed) } else { a.load(Ordering::Relaxed) };
        self.members
            .iter()
            .enumerate()
            .map(|(i, m)| EndpointStats {
                url: m.url.clone().unwrap_or_else(|| "(default)".to_owned()),
                requests: read(&m.requests),
                errors: read(&m.errors),
                in_flight: m.in_flight.load(Ordering::Relaxed),
                downs: read(&m.downs),
                down: self.down_until(i).is_some_and(|t| t > now),
            })
            .collect()
    }

    /// One request (with the SDK's own retries) on an endpoint picked by policy; when it fails
    /// without an answer (connection refused or reset) and another endpoint is up, it is sent
    /// there instead, up to once per endpoint. (GETs and listings, retried by s3dlio's own loops,
    /// take a [`Lease`] per attempt instead.)
    pub(crate) async fn run<T, F, Fut>(self: &Arc<Self>, mut f: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut tried = 0;
        loop {
            let lease = self.lease();
            let r = lease.record(f(lease.client().clone()).await);
            tried += 1;
            match r {
                Err(e)
                    if tried < self.members.len()
                        && crate::metrics::cause(&e) == "connection"
                        && self.pick(Instant::now()) != lease.i =>
                {
                    continue;
                }
                r => return r,
            }
        }
    }

    /// The first endpoint's client (for settings such as the region, which every member shares).
    pub(crate) fn any_client(&self) -> &Client {
        &self.members[0].client
    }
}

/// One request attempt's endpoint. Counts in flight until dropped: keep it until the response
/// body has been read.
pub(crate) struct Lease {
    set: Arc<Endpoints>,
    i: usize,
}

impl Lease {
    pub(crate) fn client(&self) -> &Client {
        &self.set.members[self.i].client
    }

    /// The endpoint's client with the SDK's retries off (the caller retries).
    pub(crate) fn single_attempt(&self) -> &Client {
        &self.set.members[self.i].single
    }

    /// Record the attempt's outcome: an answer from the server (success or an error status) puts
    /// the endpoint back up; no answer at all (cause `connection`) marks it down for a while.
    pub(crate) fn record<T>(&self, r: Result<T>) -> Result<T> {
        let m = &self.set.members[self.i];
        let mut down = m.down.lock().unwrap_or_else(|p| p.into_inner());
        match &r {
            Ok(_) => *down = Down::default(),
            Err(e) => {
                m.errors.fetch_add(1, Ordering::Relaxed);
                if crate::metrics::cause(e) == "connection" && self.set.members.len() > 1 {
                    let wait = if down.next.is_zero() { FIRST_DOWN } else { down.next };
                    down.until = Some(Instant::now() + wait);
                    down.next = (wait * 2).min(MAX_DOWN);
                    m.downs.fetch_add(1, Ordering::Relaxed);
                } else if e.status().is_some() {
                    *down = Down::default();
                }
            }
        }
        r
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.set.members[self.i].in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The endpoints of `endpoint_url`: one URL, or several separated by commas (blanks ignored).
pub fn split_endpoints(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn client() -> Client {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .build();
        Client::from_conf(conf)
    }

    fn set(n: usize, policy: Policy) -> Arc<Endpoints> {
        Arc::new(Endpoints::new(
            (0..n).map(|i| (Some(format!("http://e{i}")), client(), client())).collect(),
            policy,
        ))
    }

    fn refused() -> Error {
        Error::new(ErrorKind::Io, Some("s3://b/k"), "dispatch failure: connection refused")
    }

    #[test]
    fn round_robin_takes_turns() {
        let s = set(3, Policy::RoundRobin);
        let picked: Vec<usize> = (0..6).map(|_| s.lease().i).collect();
        assert_eq!(picked, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(s.stats(false).iter().map(|e| e.requests).collect::<Vec<_>>(), vec![2, 2, 2]);
        assert!(s.stats(false).iter().all(|e| e.in_flight == 0));
    }

    #[test]
    fn least_outstanding_avoids_busy_endpoints() {
        let s = set(3, Policy::LeastOutstanding);
        let held: Vec<Lease> = (0..3).map(|_| s.lease()).collect(); // one in flight on each
        let busy = s.lease(); // two on one of them
        let next: Vec<usize> = (0..2).map(|_| s.lease().i).collect();
        assert!(next.iter().all(|&i| i != busy.i), "{next:?} vs busy {}", busy.i);
        drop(held);
        assert_eq!(s.stats(false).iter().map(|e| e.in_flight).sum::<u64>(), 1);
    }

    #[test]
    fn a_refusing_endpoint_is_skipped_then_retried() {
        let s = set(2, Policy::RoundRobin);
        let first = s.lease();
        assert_eq!(first.i, 0);
        assert!(first.record::<()>(Err(refused())).is_err());
        drop(first);
        let st = s.stats(false);
        assert!(st[0].down && st[0].downs == 1 && st[0].errors == 1);
        assert!((0..5).all(|_| s.lease().i == 1)); // skipped while down
                                                   // an answer (even an error status) puts it back up
        let l = Lease { set: Arc::clone(&s), i: 0 };
        s.members[0].in_flight.fetch_add(1, Ordering::Relaxed);
        let nf = Error::new(ErrorKind::NotFound, Some("s3://b/k"), "NoSuchKey")
            .with_detail(crate::error::ServerDetail { status: Some(404), ..Default::default() });
        assert!(l.record::<()>(Err(nf)).is_err());
        assert!(!s.stats(false)[0].down);
        assert_eq!(s.stats(true)[0].errors, 2);
        assert_eq!(s.stats(false)[0].errors, 0);
    }

    #[test]
    fn all_down_picks_the_one_back_soonest_and_backoff_doubles() {
        let s = set(2, Policy::LeastOutstanding);
        for i in [0, 1] {
            let l = Lease { set: Arc::clone(&s), i };
            s.members[i].in_flight.fetch_add(1, Ordering::Relaxed);
            assert!(l.record::<()>(Err(refused())).is_err());
        }
        let l = Lease { set: Arc::clone(&s), i: 0 };
        s.members[0].in_flight.fetch_add(1, Ordering::Relaxed);
        assert!(l.record::<()>(Err(refused())).is_err()); // 0 again: now down for 2 s
        assert_eq!(s.pick(Instant::now()), 1);
        assert_eq!(s.members[0].down.lock().unwrap().next, Duration::from_secs(4));
    }

    #[test]
    fn endpoints_split_on_commas() {
        assert_eq!(split_endpoints(" http://a:1 , http://b:2,,"), vec!["http://a:1", "http://b:2"]);
        assert_eq!(split_endpoints("http://a"), vec!["http://a"]);
    }
}
