//! Event-stream tickets: how a browser opens `GET /events` when `read-auth` is on.
//!
//! `EventSource` cannot send an `Authorization` header, and the long-lived bearer token must
//! never travel in a URL (URLs end up in logs, history and `Referer`s). So a client that has
//! the token trades it for a ticket (`POST /events/ticket`, bearer required) and opens
//! `GET /events?ticket=…`. A ticket is 256 random bits, valid for [`TICKET_TTL`], good for
//! one stream only (redeeming removes it), and grants nothing but opening the event stream.
//! Only its SHA-256 is kept, so the table holds nothing a memory dump could replay, and a
//! lookup compares hashes, not the secret. At most [`MAX_TICKETS`] are outstanding (expired
//! ones are dropped first); beyond that issuing is refused rather than growing memory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

/// How long a ticket stays valid.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// Most tickets outstanding at once.
pub const MAX_TICKETS: usize = 1024;

/// Why a ticket was not issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// Too many unexpired tickets are outstanding.
    #[error("too many event-stream tickets are outstanding; try again in {} s", TICKET_TTL.as_secs())]
    TooMany,
}

/// The outstanding tickets.
#[derive(Debug, Default)]
pub struct Tickets {
    by_hash: Mutex<HashMap<[u8; 32], Instant>>,
}

impl Tickets {
    /// Issues a ticket (64 hex digits) valid until `now + TICKET_TTL`.
    pub fn issue(&self, now: Instant) -> Result<String, TicketError> {
        let mut raw = [0u8; 32];
        OsRng.fill_bytes(&mut raw);
        let ticket: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let mut map = self
            .by_hash
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_TICKETS {
            map.retain(|_, exp| *exp > now);
            if map.len() >= MAX_TICKETS {
                return Err(TicketError::TooMany);
            }
        }
        map.insert(hash(&ticket), now + TICKET_TTL);
        Ok(ticket)
    }

    /// Redeems a ticket: `true` if it was issued, is unexpired and was not redeemed before.
    /// It is gone afterwards either way.
    pub fn redeem(&self, ticket: &str, now: Instant) -> bool {
        let mut map = self
            .by_hash
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.remove(&hash(ticket)).is_some_and(|exp| exp > now)
    }
}

fn hash(ticket: &str) -> [u8; 32] {
    Sha256::digest(ticket.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_use_expiring_and_bounded() {
        let t = Tickets::default();
        let now = Instant::now();
        let a = t.issue(now).unwrap_or_default();
        assert_eq!(a.len(), 64);
        assert!(!t.redeem("not-a-ticket", now));
        assert!(t.redeem(&a, now));
        assert!(!t.redeem(&a, now), "replayed");
        let b = t.issue(now).unwrap_or_default();
        assert!(!t.redeem(&b, now + TICKET_TTL), "expired");
        for _ in 0..MAX_TICKETS {
            assert!(t.issue(now).is_ok());
        }
        assert_eq!(t.issue(now), Err(TicketError::TooMany));
        // Once they expire, room is made.
        assert!(t.issue(now + TICKET_TTL + Duration::from_secs(1)).is_ok());
    }
}
