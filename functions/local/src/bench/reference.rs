//! The reference floor: `shared/bench/floor` beside this repository (not part of it), a plain
//! loop over SQLite and AES-GCM that measures what this machine can do for a local
//! re-encryption, independent of this code. `cmk bench rewrap` runs it in the same run, so the
//! job's rate is compared with the machine's as it is at that moment (the machines are shared
//! and noisy). A reference that cannot be found, built or run is reported, never skipped
//! without a word.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the reference floor comes from.
#[derive(Clone, Debug)]
pub enum Reference {
    /// Look for `shared/bench/floor/run` beside the repository and above the current directory.
    Find,
    /// This script or binary, run with the number of data keys.
    At(PathBuf),
    /// Not measured (`--no-reference-floor`): said so in the output.
    Skip,
}

/// The places a reference floor is looked for, in order.
fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    // The repository this binary was built from, and its parent (where `shared/` sits beside it).
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    out.push(repo.join("../shared/bench/floor/run"));
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            out.push(dir.join("shared/bench/floor/run"));
            out.push(dir.join("../shared/bench/floor/run"));
        }
    }
    out
}

/// The reference's `floor_keys_per_s` for `data_keys`, or why there is none.
pub fn measure(reference: &Reference, data_keys: u64) -> Result<f64, String> {
    let program = match reference {
        Reference::Skip => return Err("skipped (--no-reference-floor)".into()),
        Reference::At(path) => path.clone(),
        Reference::Find => candidates()
            .into_iter()
            .find(|p| p.is_file())
            .map(|p| p.canonicalize().unwrap_or(p))
            .ok_or_else(|| {
                "not found: no shared/bench/floor/run beside the repository or above the \
                 current directory (give one with --reference-floor BIN)"
                    .to_owned()
            })?,
    };
    println!(
        "reference floor: {} {data_keys} (builds once, then runs)",
        program.display()
    );
    let out = Command::new(&program)
        .arg(data_keys.to_string())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(format!(
            "{} failed ({}): {}",
            program.display(),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ));
    }
    floor_rate(&stdout).ok_or_else(|| {
        format!(
            "{} printed no floor_keys_per_s= line: {stdout:?}",
            program.display()
        )
    })
}

/// The last `floor_keys_per_s=` figure of the reference's output.
fn floor_rate(stdout: &str) -> Option<f64> {
    stdout
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("floor_keys_per_s="))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_floor_figure_is_read() {
        let out = "crypto_keys_per_s_one_core=2792467 (sink 56)\nfloor_keys_per_s=367391\n";
        assert_eq!(floor_rate(out), Some(367391.0));
        assert_eq!(floor_rate("nothing here\n"), None);
    }

    #[test]
    fn a_missing_or_failing_reference_says_why() {
        let err = measure(&Reference::At("/nonexistent/run".into()), 10).expect_err("fails");
        assert!(err.contains("/nonexistent/run"), "{err}");
        let err = measure(&Reference::At("/bin/false".into()), 10).expect_err("fails");
        assert!(err.contains("failed"), "{err}");
        let err = measure(&Reference::Skip, 10).expect_err("skipped");
        assert!(err.contains("--no-reference-floor"), "{err}");
    }
}
