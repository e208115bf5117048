//! The cluster secret: generated into `DATA_DIR/cluster-secret` (mode 0600) when none is
//! configured, reused on later starts, and compared in constant time.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The secret the old Node agent shipped in its `.env.example`; refused.
pub const PLACEHOLDER_SECRET: &str = "your-cluster-secret-key";
/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// Why a secret is refused, or `Ok`.
pub fn check_secret(s: &str) -> Result<(), String> {
    if s == PLACEHOLDER_SECRET {
        return Err(format!("it is the old placeholder {PLACEHOLDER_SECRET:?}; set a real secret"));
    }
    if s.len() < MIN_SECRET_LEN {
        return Err(format!("it is {} bytes long; at least {MIN_SECRET_LEN} are required", s.len()));
    }
    if s.trim() != s || s.chars().any(|c| c.is_control()) {
        return Err("it contains whitespace at its ends or control characters".to_string());
    }
    Ok(())
}

/// Reads the secret stored at `path`, or generates and stores a new one.
/// Returns the secret and whether it was generated now.
/// An error is one line for the operator, naming the file.
pub fn load_or_generate(path: &Path) -> Result<(String, bool), String> {
    let fail = |what: &str, e: std::io::Error| format!("cannot {what} secret file {}: {e}", path.display());
    match fs::read_to_string(path) {
        Ok(text) => {
            let secret = text.trim().to_string();
            check_secret(&secret).map_err(|why| format!("invalid secret in {}: {why}", path.display()))?;
            // An operator may have created it by hand with looser permissions: tighten them.
            let mode = fs::metadata(path).map_err(|e| fail("inspect", e))?.permissions().mode();
            if mode & 0o077 != 0 {
                fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|e| {
                    format!(
                        "secret file {} has mode {:o} (others may read it) and cannot be made 0600: {e}; \
                         give it to the agent's user, or make it 0600",
                        path.display(),
                        mode & 0o777
                    )
                })?;
            }
            Ok((secret, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret =
                random_hex(32).map_err(|e| format!("cannot generate a secret: reading /dev/urandom failed: {e}"))?;
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| fail("create", e))?;
            f.write_all(format!("{secret}\n").as_bytes()).map_err(|e| fail("write", e))?;
            f.sync_all().map_err(|e| fail("sync", e))?;
            Ok((secret, true))
        }
        Err(e) => Err(fail("read", e)),
    }
}

/// `n` random bytes from the kernel, as lowercase hex.
pub fn random_hex(n: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reused() {
        let dir = std::env::temp_dir().join(format!("codara-secret-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cluster-secret");
        let _ = fs::remove_file(&path);
        let (a, gen_a) = load_or_generate(&path).unwrap();
        let (b, gen_b) = load_or_generate(&path).unwrap();
        assert!(gen_a && !gen_b);
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
