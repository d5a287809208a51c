//! Helpers shared by the model crate's integration tests.

/// Whether `python3` can import `modules` (e.g. "safetensors, numpy"); prints why a test
/// skips when it cannot.
pub fn python_with(modules: &str) -> bool {
    let probe = std::process::Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output();
    match probe {
        Ok(o) if o.status.success() => true,
        _ => {
            println!(
                "skipped: python3 with `{modules}` is not installed (pip install {})",
                modules.replace(',', "")
            );
            false
        }
    }
}
