//! Which try runs next: one try per pair at a time, one try per node.

use crate::agent::TryResult;
use crate::pairs::{NatDef, Pair};
use std::collections::BTreeMap;

#[derive(Default)]
pub(crate) struct PairState {
    pub(crate) started: usize,
    pub(crate) running: bool,
    pub(crate) results: Vec<TryResult>,
}

pub(crate) struct Sched {
    pub(crate) pairs: Vec<PairState>,
    pub(crate) busy: Vec<bool>,
    pub(crate) next: usize,
    pub(crate) done: usize,
}

/// Picks a pair that is not running and has free sites, among those with
/// the most tries left (round robin among equals): pairs whose tries are
/// slow (timeouts) then keep running from the start instead of piling up
/// at the end, since one pair's tries run one at a time.
pub(crate) fn pick(s: &mut Sched, pairs: &[Pair], defs: &[NatDef], site_ix: &BTreeMap<String, usize>, tries: usize) -> Option<(usize, usize, usize)> {
    let n = pairs.len();
    let mut best: Option<(usize, usize, usize)> = None;
    for k in 0..n {
        let p = (s.next + k) % n;
        let st = &s.pairs[p];
        if st.running || st.started >= tries || best.is_some_and(|(q, _, _)| s.pairs[q].started <= st.started) {
            continue;
        }
        let free = |d: usize, not: Option<usize>| {
            defs[d].sites.iter().map(|x| site_ix[x]).find(|&i| !s.busy[i] && Some(i) != not)
        };
        let Some(a) = free(pairs[p].a, None) else { continue };
        let Some(b) = free(pairs[p].b, Some(a)) else { continue };
        best = Some((p, a, b));
    }
    let (p, a, b) = best?;
    s.busy[a] = true;
    s.busy[b] = true;
    s.pairs[p].running = true;
    s.pairs[p].started += 1;
    s.next = p + 1;
    Some((p, a, b))
}
