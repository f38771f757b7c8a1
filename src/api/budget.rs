//! A budget of wrong access tokens per peer, so that the token cannot be guessed at line rate.
//!
//! Each peer may send [`TokenBudget::BURST`] wrong tokens at once, and earns one more every
//! [`TokenBudget::EARN_EVERY`] (10 a minute). A peer that has spent its budget gets "The access
//! token is wrong." at once for every request until it has earned one again, without its token
//! being compared: a right guess in that time is not told apart from a wrong one, so guessing
//! goes no faster than the budget, however many connections it uses. A right token spends
//! nothing. The answer is the envelope's own, so an admin sees what it sees for a wrong token.
//!
//! A peer is an IPv4 address or an IPv6 /64 (one host commonly holds a whole /64). The table is
//! bounded ([`TokenBudget::MAX_PEERS`]): when it is full, peers back to a full budget are
//! forgotten first, then the one with the most budget left, so that a flood of wrong tokens
//! from many addresses does not push a refused peer out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Who a budget belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Peer {
    V4([u8; 4]),
    /// The /64 prefix.
    V6([u8; 8]),
    /// A request without a peer address (not from the accept loop): all share one budget.
    Unknown,
}

impl Peer {
    fn of(ip: Option<IpAddr>) -> Self {
        match ip.map(|ip| ip.to_canonical()) {
            Some(IpAddr::V4(v4)) => Peer::V4(v4.octets()),
            Some(IpAddr::V6(v6)) => {
                let o = v6.octets();
                let mut p = [0u8; 8];
                p.copy_from_slice(&o[..8]);
                Peer::V6(p)
            }
            None => Peer::Unknown,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Wrong tokens this peer may still send, as of `at`.
    left: u32,
    at: Instant,
}

/// The wrong-token budget of every peer of one listener.
#[derive(Debug, Default)]
pub(crate) struct TokenBudget {
    peers: Mutex<HashMap<Peer, Bucket>>,
}

impl TokenBudget {
    /// Wrong tokens a peer may send at once.
    pub(crate) const BURST: u32 = 10;
    /// One more wrong token is allowed per this much time.
    pub(crate) const EARN_EVERY: Duration = Duration::from_secs(6);
    /// Peers remembered at most.
    pub(crate) const MAX_PEERS: usize = 1024;

    /// The bucket as of `now`: what has been earned since it was last seen.
    fn refilled(b: Bucket, now: Instant) -> Bucket {
        let earned = now.saturating_duration_since(b.at).as_nanos() / Self::EARN_EVERY.as_nanos();
        let earned = u32::try_from(earned).unwrap_or(u32::MAX);
        if earned == 0 {
            return b;
        }
        Bucket {
            left: b.left.saturating_add(earned).min(Self::BURST),
            at: b.at + Self::EARN_EVERY * earned.min(Self::BURST),
        }
    }

    /// True when `peer` has no wrong token left: its request is refused without a look at its
    /// token.
    pub(crate) fn exhausted(&self, peer: Option<IpAddr>) -> bool {
        let now = Instant::now();
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers
            .get(&Peer::of(peer))
            .is_some_and(|b| Self::refilled(*b, now).left == 0)
    }

    /// `peer` sent a wrong token.
    pub(crate) fn spend(&self, peer: Option<IpAddr>) {
        let now = Instant::now();
        let key = Peer::of(peer);
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if !peers.contains_key(&key) && peers.len() >= Self::MAX_PEERS {
            peers.retain(|_, b| Self::refilled(*b, now).left < Self::BURST);
            if peers.len() >= Self::MAX_PEERS {
                // The peer with the most budget left (the least suspect), the oldest of those.
                let least_suspect = peers
                    .iter()
                    .min_by_key(|(_, b)| (std::cmp::Reverse(Self::refilled(**b, now).left), b.at))
                    .map(|(k, _)| *k);
                if let Some(k) = least_suspect {
                    peers.remove(&k);
                }
            }
        }
        let b = peers.entry(key).or_insert(Bucket {
            left: Self::BURST,
            at: now,
        });
        let mut r = Self::refilled(*b, now);
        if r.left == Self::BURST {
            // A full bucket earns from its first spend on, not from when it was last full.
            r.at = now;
        }
        r.left = r.left.saturating_sub(1);
        *b = r;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn ten_wrong_tokens_then_one_every_six_seconds() {
        let b = TokenBudget::default();
        let a = ip("192.0.2.1");
        for i in 0..TokenBudget::BURST {
            assert!(!b.exhausted(a), "refused after {i} wrong tokens");
            b.spend(a);
        }
        assert!(b.exhausted(a));
        // Another peer has its own budget.
        assert!(!b.exhausted(ip("192.0.2.2")));
        tokio::time::advance(Duration::from_millis(5_999)).await;
        assert!(b.exhausted(a));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!b.exhausted(a));
        b.spend(a);
        assert!(b.exhausted(a));
        // Over a minute, the whole burst again, and no more.
        tokio::time::advance(Duration::from_secs(600)).await;
        for _ in 0..TokenBudget::BURST {
            assert!(!b.exhausted(a));
            b.spend(a);
        }
        assert!(b.exhausted(a));
    }

    #[tokio::test(start_paused = true)]
    async fn an_ipv6_host_is_its_64_and_a_mapped_ipv4_is_the_ipv4() {
        let b = TokenBudget::default();
        for i in 0..TokenBudget::BURST {
            b.spend(ip(&format!("2001:db8:1:2::{i:x}")));
        }
        assert!(b.exhausted(ip("2001:db8:1:2:ffff::1")));
        assert!(!b.exhausted(ip("2001:db8:1:3::1")));
        for _ in 0..TokenBudget::BURST {
            b.spend(ip("::ffff:198.51.100.7"));
        }
        assert!(b.exhausted(ip("198.51.100.7")));
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_stays_bounded_and_keeps_the_peers_still_refused() {
        let b = TokenBudget::default();
        let attacker = ip("203.0.113.9");
        for _ in 0..TokenBudget::BURST {
            b.spend(attacker);
        }
        tokio::time::advance(Duration::from_millis(1)).await;
        for i in 0..(TokenBudget::MAX_PEERS * 2) as u32 {
            let [_, x, y, z] = i.to_be_bytes();
            b.spend(Some(IpAddr::from([10, x, y, z])));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(b.peers.lock().unwrap().len(), TokenBudget::MAX_PEERS);
        // The oldest peer, and still refused: the others, with budget left, went first.
        assert!(b.exhausted(attacker));
        assert!(!b.exhausted(ip("10.0.7.255")));
    }
}
