//! The `itera` command line: parses flags and hands off to `cli`.

mod cli;

/// mimalloc: many small allocations across stage threads.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
