//! Benchmark: digest throughput of one large artifact (default 1 GiB in one file plus
//! 1,000 small files), median of 5 runs over a warm page cache.
//!
//! `cargo run --release -p itera-engine --example digest_bench [-- SIZE_MIB [DIR]]`

use std::io::Write;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let mib: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(1024);
    let base = match args.get(2) {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let root = base.path().join("artifact");
    std::fs::create_dir_all(root.join("small"))?;
    // Deterministic pseudo-random content (xorshift), written in 1 MiB blocks.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut block = vec![0u8; 1 << 20];
    let mut file = std::io::BufWriter::new(std::fs::File::create(root.join("big.bin"))?);
    for _ in 0..mib {
        for chunk in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        file.write_all(&block)?;
    }
    file.flush()?;
    drop(file);
    for i in 0..1000 {
        std::fs::write(
            root.join(format!("small/{i:04}.txt")),
            format!("file {i}\n"),
        )?;
    }
    let bytes = mib << 20;
    let mut times = Vec::new();
    let mut digest = None;
    for _ in 0..6 {
        let t = Instant::now();
        let (d, _) = itera_engine::store::digest::digest_tree(&root)?;
        times.push(t.elapsed().as_secs_f64());
        digest = Some(d);
    }
    times.remove(0); // the first pass warms the page cache
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    println!(
        "digest of {mib} MiB + 1000 small files: median {:.3}s = {:.2} GB/s ({} cores), digest {}",
        median,
        bytes as f64 / median / 1e9,
        itera_engine::host::cores(),
        digest.map(|d| d.short().to_owned()).unwrap_or_default()
    );
    Ok(())
}
