//! The `itera` command line: parses flags and hands off to `cli`.

mod cli;

/// mimalloc: many small allocations across stage threads.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h`): how long freed memory waits
/// before it is returned to the system; -1 = never.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // A training step frees and re-allocates the same large buffers (activations,
    // logits) every few hundred milliseconds; returning them to the system after
    // mimalloc's default 10 ms made every step page-fault them back in (measured: 3.5 s
    // of system time in a 20 s training benchmark, 0.7 s without). The process keeps its
    // peak instead, which is what its RSS is anyway.
    // SAFETY: sets a process-wide allocator option; no allocation is in flight.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    cli::main()
}
