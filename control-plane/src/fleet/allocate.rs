//! Splitting one backend's limit among the nodes that use it.
//!
//! A node may admit up to its grant in any window, and a grant change takes effect at
//! once on the node, which still remembers what it admitted in the last window. So what
//! a node can have sent in any window is bounded by the largest grant it held during that
//! window — or, when the node reported recently how much of the window it has used, by
//! that use plus what it could admit before a new grant reaches it. The allocation keeps,
//! for every window, the sum of those bounds (plus what departed nodes may still use)
//! within the limit: decreases apply at once, increases only into capacity no other node
//! can still be using.
//!
//! Each node also gets a pace: its target, the share by demand of what departed nodes do
//! not reserve (the targets sum to at most the limit). A node's bucket refills at the
//! larger of its grant and its pace, but its window check still admits at most its grant
//! in any window, so the pace changes how fast a node may use its grant, never how much:
//! the sum above is unaffected. (The bound on what a node can admit before the next grant
//! reaches it is counted at that faster rate.) It matters when demand moves: the new
//! node's grant can grow only as the old node's admissions leave the window, and paced at
//! that small grant it would take the freed capacity a minute too slowly. Fleet-wide the
//! refill rates sum to at most twice the limit per window, so requests are still spread
//! over the window rather than spent at once.
//!
//! Each node's bound holds for that node alone. When the bounds add up to more than the
//! limit (bounds that have no usable report, as after a restart), a grant growing even to
//! its own node's bound is not shown to fit: such a round lowers grants but raises none,
//! and the grants in force, which fitted, keep holding.
//!
//! A node's fallback share (used once its lease runs out: for a window no more than its
//! last grant, then the share) counts in its bound only when it may have lost its lease:
//! a node reports how long its lease still holds, and the report left it at most a
//! propagation delay before it arrived. The fallback shares add up to the limit: those of
//! nodes cut off from us (gone without a goodbye, held for a while after their lease) and
//! an equal split of the rest among the connected nodes. So a whole fleet on its fallback
//! shares stays within the limit, and a node cut off alone runs a share nobody else holds.

/// One node's view for the allocation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeShare {
    /// Requests per window the node would send if it could (smoothed).
    pub demand: f64,
    /// The grant in force now.
    pub current: u32,
    /// How much of the limit the node may have used in the current window: the largest
    /// grant it held within the last window (and the propagation allowance), including
    /// `current`, or less when a fresh report shows it used less.
    pub recent_max: u32,
}

/// New grants for `active` nodes, given what `reserved` (departed nodes whose lease or
/// recent window still counts) may use. The result has one entry per active node.
pub fn allocate(limit: u32, reserved: u32, active: &[NodeShare]) -> Vec<u32> {
    allocate_with_targets(limit, reserved, active).0
}

/// [`allocate`], and each node's target: its share by demand of what departed nodes do
/// not reserve, before the rule that increases wait for headroom. The targets sum to at
/// most the limit; a node paces at its target (the fleet's rate split by demand) while
/// its grant catches up.
pub(super) fn allocate_with_targets(limit: u32, reserved: u32, active: &[NodeShare]) -> (Vec<u32>, Vec<u32>) {
    let n = active.len() as u32;
    if n == 0 {
        return (Vec::new(), Vec::new());
    }
    let available = limit.saturating_sub(reserved);
    // A floor so an idle node can start: a tenth of an equal share, at least 1 when
    // there is room for it.
    let floor = if available >= n { (available / (10 * n)).max(1) } else { 0 };
    let extra = available - floor * n;
    let total_demand: f64 = active.iter().map(|a| a.demand.max(0.0)).sum();
    let mut targets: Vec<u32> = active
        .iter()
        .map(|a| {
            let part = if total_demand > 0.0 {
                f64::from(extra) * a.demand.max(0.0) / total_demand
            } else {
                f64::from(extra) / f64::from(n)
            };
            floor + part.floor() as u32
        })
        .collect();
    // Rounding leftovers go first to the nodes that already hold more than their rounded
    // share, then to the nodes that want the most. Keeping a leftover where it is matters:
    // demand estimates wobble, and a unit that moves is idle for a window (the increase
    // waits until the previous holder cannot still be using it).
    let leftover = available.saturating_sub(targets.iter().sum());
    let mut order: Vec<usize> = (0..active.len()).collect();
    order.sort_by(|&a, &b| active[b].demand.total_cmp(&active[a].demand));
    let mut holders: Vec<usize> = order.clone();
    holders.sort_by_key(|&i| active[i].current <= targets[i]);
    for &i in holders.iter().cycle().take(leftover as usize) {
        targets[i] += 1;
    }

    // Decreases now; increases only into headroom nobody can still be using. A node
    // that keeps or lowers its grant costs the larger of its new grant and what it may
    // already have used; a node that grows costs its current grant at least.
    let mut cost = Vec::with_capacity(active.len());
    let mut wants = Vec::with_capacity(active.len());
    for (a, &t) in active.iter().zip(&targets) {
        let base = a.current.max(a.recent_max);
        if t <= base {
            cost.push(u64::from(t.max(a.recent_max)));
            wants.push(0u64);
        } else {
            cost.push(u64::from(base));
            wants.push(u64::from(t - base));
        }
    }
    let committed: u64 = u64::from(reserved) + cost.iter().sum::<u64>();
    if committed > u64::from(limit) {
        // Each bound holds for its own node, but together they exceed the limit (bounds
        // without a usable report, as just after a reconnect): growing a node even to
        // what it may already have used is then not shown to fit. Decreases go ahead; no
        // grant grows, so the grants in force, which fitted, keep holding.
        let grants = active.iter().zip(&targets).map(|(a, &t)| t.min(a.current)).collect();
        return (grants, targets);
    }
    let mut headroom = u64::from(limit).saturating_sub(committed);
    let total_wants: u64 = wants.iter().sum();
    let mut grants: Vec<u32> = active
        .iter()
        .zip(&targets)
        .zip(&wants)
        .map(|((a, &t), &want)| {
            if want == 0 {
                return t;
            }
            let share = if total_wants <= headroom { want } else { want * headroom / total_wants.max(1) };
            a.current.max(a.recent_max) + share as u32
        })
        .collect();
    // Integer division can leave headroom unused; hand it out one by one.
    let used: u64 = active
        .iter()
        .zip(&grants)
        .zip(&wants)
        .filter(|(_, w)| **w > 0)
        .map(|((a, &g), _)| u64::from(g - a.current.max(a.recent_max)))
        .sum();
    headroom = headroom.saturating_sub(used);
    for &i in &order {
        if headroom == 0 {
            break;
        }
        if wants[i] > 0 && grants[i] < targets[i] {
            grants[i] += 1;
            headroom -= 1;
        }
    }
    (grants, targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steady(demand: f64, grant: u32) -> NodeShare {
        NodeShare { demand, current: grant, recent_max: grant }
    }

    /// The invariant: what every node may have sent in a window stays within the limit.
    fn committed(limit: u32, reserved: u32, nodes: &[NodeShare], grants: &[u32]) {
        let sum: u32 = reserved + nodes.iter().zip(grants).map(|(n, &g)| n.recent_max.max(g)).sum::<u32>();
        assert!(sum <= limit, "{sum} > {limit}: {nodes:?} -> {grants:?}");
    }

    #[test]
    fn fresh_nodes_split_by_demand_with_a_floor() {
        let nodes = [steady(70.0, 0), steady(10.0, 0), steady(10.0, 0), steady(10.0, 0)];
        let g = allocate(100, 0, &nodes);
        assert_eq!(g.iter().sum::<u32>(), 100);
        assert!(g[0] >= 65 && g[1] >= 9, "{g:?}");
        committed(100, 0, &nodes, &g);
        let idle = allocate(100, 0, &[steady(50.0, 0), steady(0.0, 0)]);
        assert!(idle[1] >= 1, "an idle node keeps a floor: {idle:?}");
    }

    #[test]
    fn increases_wait_until_the_previous_holder_cannot_still_use_it() {
        // Node 0 held 70 and now wants little; node 1 wants a lot.
        let nodes = [
            NodeShare { demand: 1.0, current: 70, recent_max: 70 },
            NodeShare { demand: 99.0, current: 30, recent_max: 30 },
        ];
        let g = allocate(100, 0, &nodes);
        assert!(g[0] < 70, "the decrease applies at once: {g:?}");
        assert_eq!(g[1], 30, "no increase while node 0 may still use its 70 this window");
        committed(100, 0, &nodes, &g);
        // A window later node 0's recent maximum is its new, small grant.
        let later = [
            NodeShare { demand: 1.0, current: g[0], recent_max: g[0] },
            NodeShare { demand: 99.0, current: 30, recent_max: 30 },
        ];
        let g2 = allocate(100, 0, &later);
        assert!(g2[1] > 90, "{g2:?}");
        committed(100, 0, &later, &g2);
    }

    #[test]
    fn no_grant_grows_while_the_bounds_together_exceed_the_limit() {
        // The case the fleet simulator found after a whole-fleet reconnect: each node's
        // bound is its largest recent grant (8, 3, 1, 5 = 17 of 11), true for each node
        // but not together. Node 3 at 2 wanting 3 is within its own bound, yet node 0
        // already uses 6 and grows back to 7 within its own: 12 of 11.
        let nodes = [
            NodeShare { demand: 61.0, current: 6, recent_max: 8 },
            NodeShare { demand: 0.0, current: 1, recent_max: 3 },
            NodeShare { demand: 0.0, current: 1, recent_max: 1 },
            NodeShare { demand: 28.8, current: 2, recent_max: 5 },
        ];
        let g = allocate(11, 0, &nodes);
        for (node, grant) in nodes.iter().zip(&g) {
            assert!(*grant <= node.current, "no grant grows: {g:?}");
        }
        // Decreases still apply.
        let shrinking = [
            NodeShare { demand: 1.0, current: 6, recent_max: 8 },
            NodeShare { demand: 99.0, current: 5, recent_max: 9 },
        ];
        let g = allocate(11, 0, &shrinking);
        assert!(g[0] < 6 && g[1] <= 5, "{g:?}");
    }

    #[test]
    fn reserved_capacity_of_departed_nodes_is_not_granted() {
        let nodes = [steady(10.0, 10), steady(10.0, 10)];
        let g = allocate(100, 60, &nodes);
        assert!(g.iter().sum::<u32>() <= 40, "{g:?}");
        committed(100, 60, &nodes, &g);
    }

    #[test]
    fn the_invariant_holds_under_random_churn() {
        // A deterministic pseudo-random walk over demands and limits.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        for _ in 0..200 {
            let limit = 1 + rand(500) as u32;
            let n = 1 + rand(6) as usize;
            let mut nodes: Vec<NodeShare> = (0..n).map(|_| steady(rand(300) as f64, 0)).collect();
            let reserved = if rand(3) == 0 { rand(u64::from(limit)) as u32 } else { 0 };
            for _ in 0..10 {
                let g = allocate(limit, reserved, &nodes);
                committed(limit, reserved, &nodes, &g);
                for (node, grant) in nodes.iter_mut().zip(&g) {
                    // Sometimes a window passes (history forgets), sometimes not.
                    let recent_max = if rand(2) == 0 { *grant } else { node.recent_max.max(*grant) };
                    *node = NodeShare { demand: rand(300) as f64, current: *grant, recent_max };
                }
            }
        }
    }

    #[test]
    fn no_nodes_no_grants_and_tiny_limits_do_not_overflow() {
        assert!(allocate(10, 0, &[]).is_empty());
        let g = allocate(1, 0, &[steady(5.0, 0), steady(5.0, 0), steady(5.0, 0)]);
        assert!(g.iter().sum::<u32>() <= 1, "{g:?}");
    }
}

#[cfg(test)]
mod reported_use {
    use super::*;

    #[test]
    fn a_node_that_used_little_of_a_big_grant_frees_it_at_once() {
        // Node 0 holds 600 but reported using 5; node 1 arrives with demand.
        let nodes = [
            NodeShare { demand: 1.0, current: 600, recent_max: 15 },
            NodeShare { demand: 100.0, current: 1, recent_max: 1 },
        ];
        let g = allocate(600, 0, &nodes);
        assert!(g[1] > 400, "{g:?}");
        let sum: u32 = nodes.iter().zip(&g).map(|(n, &g)| n.recent_max.max(g)).sum();
        assert!(sum <= 600, "{g:?}");
    }
}
