//! `plans.<name>.concurrency`: how many calls of one tenant may be in flight at once.
//!
//! A burst limit counts calls as they arrive; it cannot tell ten one-second calls from ten
//! ten-minute ones. Where each call holds the upstream's work for long (a browser session, a
//! scrape, a completion streamed for minutes), what a plan sells and what the upstream must be
//! protected from is the number of calls running at once. The count is kept by each instance,
//! as nginx's `limit_conn` keeps it: a call holds its slot from admission to the end of its
//! answer (for a WebSocket, to the end of the connection), and the slot is given back however
//! the call ends, because it is released when the call's state is dropped. A store-kept count
//! would need leases renewed for as long as each call runs; it is not offered.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

/// One plan's calls in flight, per tenant.
#[derive(Debug)]
pub struct InFlight {
    limit: NonZeroU32,
    counts: Mutex<HashMap<Arc<str>, u32>>,
}

/// A call refused because its tenant has `limit` calls in flight already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConcurrencyExceeded {
    /// The plan's `concurrency`.
    pub limit: u32,
}

/// A call's place among its tenant's calls in flight; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    owner: Arc<InFlight>,
    tenant: Arc<str>,
}

impl InFlight {
    /// Counts for a plan allowing `limit` calls at once per tenant.
    pub fn new(limit: NonZeroU32) -> Arc<InFlight> {
        Arc::new(InFlight {
            limit,
            counts: Mutex::default(),
        })
    }

    /// Takes a slot for one more call of `tenant`, if it has fewer than the limit in flight.
    pub fn acquire(self: &Arc<Self>, tenant: &str) -> Result<Slot, ConcurrencyExceeded> {
        let exceeded = ConcurrencyExceeded {
            limit: self.limit.get(),
        };
        // A poisoned lock (a panic while it was held) still holds consistent counts: every
        // change below is one statement.
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let key: Arc<str> = match counts.get_key_value(tenant) {
            Some((_, n)) if *n >= self.limit.get() => return Err(exceeded),
            Some((key, _)) => key.clone(),
            None => Arc::from(tenant),
        };
        *counts.entry(key.clone()).or_insert(0) += 1;
        Ok(Slot {
            owner: self.clone(),
            tenant: key,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl InFlight {
        fn in_flight(&self, tenant: &str) -> u32 {
            self.counts
                .lock()
                .unwrap()
                .get(tenant)
                .copied()
                .unwrap_or(0)
        }
    }

    #[test]
    fn slots_are_per_tenant_and_given_back_when_dropped() {
        let f = InFlight::new(NonZeroU32::new(2).unwrap());
        let a1 = f.acquire("a").unwrap();
        let a2 = f.acquire("a").unwrap();
        assert_eq!(
            f.acquire("a").unwrap_err(),
            ConcurrencyExceeded { limit: 2 }
        );
        let b = f.acquire("b").unwrap();
        assert_eq!((f.in_flight("a"), f.in_flight("b")), (2, 1));
        drop(a1);
        let a3 = f.acquire("a").unwrap();
        drop((a2, a3, b));
        assert_eq!((f.in_flight("a"), f.in_flight("b")), (0, 0));
        assert!(
            f.counts.lock().unwrap().is_empty(),
            "idle tenants are forgotten"
        );
    }
}
