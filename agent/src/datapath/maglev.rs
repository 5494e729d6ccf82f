//! Maglev consistent hashing (Eisenbud et al., NSDI 2016, §3.4) for the north-south backend
//! choice: a lookup table of [`TABLE_SIZE`] slots (a prime), each naming a backend, filled from
//! a per-backend permutation of the slots. A flow's hash modulo the table size picks its
//! backend (`ferry_from_uplink`, `FERRY_MAGLEV4`).
//!
//! Two properties make it worth a table:
//! - every node computes the same table from the same backends (the permutations depend only on
//!   the backends' addresses, hashed with a fixed FNV-1a, and the backends are sorted first), so
//!   a flow that reaches any node picks the same backend;
//! - a backend joining or leaving moves few flows of the others (about 1/N of the slots change
//!   instead of nearly all of them with `hash % N`).
//!
//! Each backend gets `TABLE_SIZE / N` slots, give or take one.

use super::services::BackendAddr;

/// Slots per table: a prime, large against the backend counts it serves well (the paper keeps
/// it above 100 × N for near-minimal disruption; 4093 slots is 16 KiB per frontend).
pub const TABLE_SIZE: usize = ferry_ebpf_common::MAGLEV_TABLE_SIZE;

/// FNV-1a (64-bit) of `data`, starting from `basis`: a fixed hash, identical on every node and
/// in every version of Ferry (std's hashers promise neither).
pub(crate) fn fnv1a(basis: u64, data: &[u8]) -> u64 {
    data.iter().fold(basis, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn name(b: &BackendAddr) -> [u8; 7] {
    let a = b.addr.octets();
    let p = b.port.to_be_bytes();
    [a[0], a[1], a[2], a[3], p[0], p[1], b.proto]
}

/// The table for `backends` (any order, duplicates ignored): for each slot, the index of its
/// backend in the sorted, deduplicated list that is returned with it. Empty without backends.
pub fn table(backends: &[BackendAddr]) -> (Vec<BackendAddr>, Vec<usize>) {
    let mut sorted = backends.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.is_empty() {
        return (sorted, Vec::new());
    }
    let m = TABLE_SIZE as u64;
    let perms: Vec<(u64, u64)> = sorted
        .iter()
        .map(|b| {
            let n = name(b);
            let offset = fnv1a(0xcbf2_9ce4_8422_2325, &n) % m;
            let skip = fnv1a(0x8422_2325_cbf2_9ce4, &n) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; sorted.len()];
    let mut slots = vec![usize::MAX; TABLE_SIZE];
    let mut filled = 0;
    'fill: loop {
        for (i, (offset, skip)) in perms.iter().enumerate() {
            // The backend's next preferred slot that is still free.
            let mut c = ((offset + next[i] * skip) % m) as usize;
            while slots[c] != usize::MAX {
                next[i] += 1;
                c = ((offset + next[i] * skip) % m) as usize;
            }
            slots[c] = i;
            next[i] += 1;
            filled += 1;
            if filled == TABLE_SIZE {
                break 'fill;
            }
        }
    }
    (sorted, slots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn backends(n: u8) -> Vec<BackendAddr> {
        (0..n)
            .map(|i| BackendAddr {
                addr: Ipv4Addr::new(10, 244, i % 3, 10 + i),
                port: 8080,
                proto: 6,
            })
            .collect()
    }

    fn owners(backends: &[BackendAddr]) -> Vec<BackendAddr> {
        let (sorted, slots) = table(backends);
        slots.iter().map(|&i| sorted[i]).collect()
    }

    #[test]
    fn every_backend_gets_an_equal_share() {
        for n in [1, 2, 3, 7, 10, 50] {
            let (sorted, slots) = table(&backends(n));
            assert_eq!(slots.len(), TABLE_SIZE);
            let mut counts = vec![0usize; sorted.len()];
            for s in slots {
                counts[s] += 1;
            }
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(hi - lo <= 1, "{n} backends: shares {lo}..{hi}");
        }
        assert!(table(&[]).1.is_empty());
    }

    #[test]
    fn the_order_of_backends_does_not_matter() {
        let b = backends(10);
        let mut rev = b.clone();
        rev.reverse();
        rev.push(b[0]);
        assert_eq!(owners(&b), owners(&rev));
    }

    #[test]
    fn a_backend_leaving_moves_few_other_flows() {
        let b = backends(10);
        let before = owners(&b);
        let gone = b[4];
        let after = owners(&[&b[..4], &b[5..]].concat());
        // Slots of the remaining backends that changed owner: Maglev keeps them few (the
        // paper's figure: a small fraction), where hash % N would move about 90 % of them.
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(x, y)| **x != gone && x != y)
            .count();
        let kept = before.iter().filter(|x| **x != gone).count();
        assert!(
            moved * 100 < kept * 10,
            "{moved} of {kept} slots of remaining backends moved"
        );
        // The leaving backend's slots went to the others.
        assert!(after.iter().all(|x| *x != gone));
    }
}
