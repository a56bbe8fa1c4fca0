//! Helpers shared by the integration test binaries.

use std::path::PathBuf;

/// A synthetic space generated quietly into a temporary directory that
/// outlives the test binary's tests (each binary keeps one in a `OnceLock`).
pub fn generated_space(hospitals: usize, patients: usize, seed: u64) -> PathBuf {
    let dir = tempfile::tempdir().expect("tempdir").keep();
    kexin::synth::generate(
        &dir,
        &kexin::synth::GenOptions {
            hospitals,
            patients,
            seed,
            csv: false,
            quiet: true,
        },
    )
    .expect("generate");
    dir
}
