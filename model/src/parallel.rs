//! Coarse-grained parallelism with results independent of the thread count: a list of
//! independent parts (a training step's micro-batches, a scoring run's batches) shared out
//! to groups of the current pool's threads, each part computed whole by one group, results
//! returned in part order for the caller to combine in that order.
//!
//! Inside a part every op keeps its own fine-grained parallelism on the group's threads
//! (one thread per group on 2 cores, so products and kernels run without synchronisation);
//! what a part computes never depends on which group ran it or on how many threads there
//! are, so the combined result is the same bits for 1, 2, 3 or 8 threads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The groups' pools for `threads` threads in `groups` groups, built once per process and
/// kept: their threads keep the product kernels' packing buffers (thread-local) from one
/// step to the next, where fresh threads would allocate and fault them in again.
/// `None` when the operating system refuses the threads.
fn group_pools(threads: usize, groups: usize) -> Option<Arc<Vec<rayon::ThreadPool>>> {
    type Pools = Mutex<HashMap<(usize, usize), Arc<Vec<rayon::ThreadPool>>>>;
    static POOLS: OnceLock<Pools> = OnceLock::new();
    let cache = POOLS.get_or_init(Pools::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = cache.get(&(threads, groups)) {
        return Some(p.clone());
    }
    let pools: Vec<rayon::ThreadPool> = (0..groups)
        .map(|g| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads / groups + usize::from(g < threads % groups))
                .thread_name(move |i| format!("itera-part-{g}-{i}"))
                .build()
                .ok()
        })
        .collect::<Option<_>>()?;
    let pools = Arc::new(pools);
    cache.insert((threads, groups), pools.clone());
    Some(pools)
}

/// `f(0), ..., f(n - 1)`, in that order, computed by `min(n, threads)` groups of the
/// current rayon pool's threads taking the next part as they finish one. With one thread
/// (or one part) the parts run one after the other on the current pool.
pub fn run_parts<R: Send>(n: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let threads = rayon::current_num_threads();
    let groups = threads.min(n);
    if groups <= 1 {
        return (0..n).map(f).collect();
    }
    // Without threads to spare, the same parts in order on the current pool.
    let Some(pools) = group_pools(threads, groups) else {
        return (0..n).map(f).collect();
    };
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<R>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        let r = f(i);
        // Invariant: each index is taken once, and a panic in `f` propagates below
        // before anyone reads a poisoned slot.
        *slots[i].lock().expect("part slot") = Some(r);
    };
    std::thread::scope(|s| {
        for pool in &pools[1..] {
            s.spawn(|| pool.install(work));
        }
        pools[0].install(work);
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .expect("part slot")
                .expect("every part computed")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_come_back_in_order_on_any_thread_count() {
        for threads in [1, 2, 3, 8] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let got = pool.install(|| {
                run_parts(13, |i| {
                    // Each part also uses the group's pool, as the ops do.
                    use rayon::prelude::*;
                    (0..1000u64)
                        .into_par_iter()
                        .map(|x| x * i as u64)
                        .sum::<u64>()
                })
            });
            let want: Vec<u64> = (0..13).map(|i| 499_500 * i).collect();
            assert_eq!(got, want, "{threads} threads");
        }
    }

    #[test]
    fn two_callers_at_once_share_the_kept_pools_and_keep_their_own_results() {
        // Two callers with the same thread count use the same kept group pools at once
        // (e.g. two trainers in one process); both finish with their own results.
        let outer = |seed: u64| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap();
            pool.install(|| {
                (0..20)
                    .map(|_| run_parts(5, |i| seed * 100 + i as u64).iter().sum::<u64>())
                    .collect::<Vec<u64>>()
            })
        };
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| outer(1));
            let b = s.spawn(|| outer(2));
            (a.join().unwrap(), b.join().unwrap())
        });
        assert_eq!(a, vec![510; 20]);
        assert_eq!(b, vec![1010; 20]);
        // Kept: the same pools come back for the same layout, built once.
        let (p, q) = (group_pools(2, 2).unwrap(), group_pools(2, 2).unwrap());
        assert!(Arc::ptr_eq(&p, &q), "the group pools are built afresh");
    }
}
