//! The node's WireGuard private key and the cluster PSK (spec 9.5): the key file is
//! `/run/flannel/wgkey` or `$WIREGUARD_KEY_FILE` (the caller passes the path in, so tests need
//! no process environment). Absent: a clamped Curve25519 key is generated and written as
//! standard base64 (44 characters, no newline) into a file of mode 0400, its directory created
//! with mode 0755. Present: read and decoded (line breaks tolerated). The same key serves every
//! device and every restart.
//!
//! Errors name the file or the net-conf key, never the key material: `PrivateKey` and
//! `PresharedKey` print as `<redacted>`.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use boringtun::x25519;

use crate::backend::peers::{PresharedKey, WgKey, base64_std_encode};
use crate::netconf::backend::base64_std_decode;

/// The default key file (spec 9.5).
pub const DEFAULT_KEY_FILE: &str = "/run/flannel/wgkey";
/// The environment variable naming another key file.
pub const KEY_FILE_ENV: &str = "WIREGUARD_KEY_FILE";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading the WireGuard key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("could not parse private key from file {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("creating the WireGuard key file {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("could not parse psk: the Backend key \"PSK\" is not the base64 encoding of a 32-byte key")]
    Psk,
}

/// A Curve25519 private key. Never printed: `Debug` shows `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; 32]);

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl PrivateKey {
    /// A key from raw bytes, clamped as Curve25519 requires (RFC 7748 section 5), as `wg genkey`.
    pub fn from_bytes(mut bytes: [u8; 32]) -> PrivateKey {
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        PrivateKey(bytes)
    }

    /// A fresh random key.
    pub fn generate() -> PrivateKey {
        PrivateKey::from_bytes(rand::random())
    }

    /// The bytes as they go to the device (generic netlink, UAPI). Unclamped input is kept
    /// as is: the scalar multiplication clamps anyway, and a key read back must compare equal.
    pub fn from_raw(bytes: [u8; 32]) -> PrivateKey {
        PrivateKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn public_key(&self) -> WgKey {
        let secret = x25519::StaticSecret::from(self.0);
        WgKey(*x25519::PublicKey::from(&secret).as_bytes())
    }

    /// Standard base64; only for the key file and the UAPI (never for a log line).
    pub fn to_base64(&self) -> String {
        base64_std_encode(&self.0)
    }
}

/// Decode a 32-byte key from standard base64; CR/LF anywhere and surrounding white space are
/// tolerated. `None` when it is not exactly 32 bytes of valid base64.
pub fn decode_key(text: &str) -> Option<[u8; 32]> {
    let bytes = base64_std_decode(text.trim())?;
    <[u8; 32]>::try_from(bytes.as_slice()).ok()
}

/// The PSK of the net-conf (already validated by the parser; checked again here).
pub fn parse_psk(text: &str) -> Result<PresharedKey, KeyError> {
    decode_key(text)
        .map(|k| PresharedKey(WgKey(k)))
        .ok_or(KeyError::Psk)
}

/// Read the key file, or create it with a new key when it does not exist.
pub fn load_or_create(path: &Path) -> Result<PrivateKey, KeyError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let parse = |reason: &str| KeyError::Parse {
                path: path.to_path_buf(),
                reason: reason.to_string(),
            };
            let text = String::from_utf8(bytes).map_err(|_| parse("the file is not text"))?;
            let key = decode_key(&text).ok_or_else(|| parse("not the base64 encoding of a 32-byte key"))?;
            Ok(PrivateKey::from_raw(key))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = PrivateKey::generate();
            write_key_file(path, &key).map_err(|source| KeyError::Create {
                path: path.to_path_buf(),
                source,
            })?;
            tracing::info!(path = %path.display(), public_key = %key.public_key(), "created a new WireGuard private key");
            Ok(key)
        }
        Err(source) => Err(KeyError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// `mkdir -p` (0755), then the key written to a temporary file of mode 0400 in the same
/// directory, synced and renamed into place (a crash never leaves a half-written key).
fn write_key_file(path: &Path, key: &PrivateKey) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "wgkey".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&tmp)?;
        file.write_all(key.to_base64().as_bytes())?;
        file.set_permissions(std::fs::Permissions::from_mode(0o400))?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    // RFC 7748 section 6.1 (Alice).
    const ALICE_PRIVATE: &str = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
    const ALICE_PUBLIC: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

    #[test]
    fn public_key_matches_rfc7748_vector() {
        let key = PrivateKey::from_raw(decode_key(ALICE_PRIVATE).unwrap());
        assert_eq!(key.public_key().to_string(), ALICE_PUBLIC);
    }

    #[test]
    fn generated_keys_are_clamped_and_distinct() {
        let a = PrivateKey::generate();
        let b = PrivateKey::generate();
        assert_ne!(a, b);
        for k in [&a, &b] {
            let bytes = k.as_bytes();
            assert_eq!(bytes[0] & 7, 0);
            assert_eq!(bytes[31] & 0x80, 0);
            assert_eq!(bytes[31] & 0x40, 0x40);
        }
    }

    #[test]
    fn missing_file_is_created_with_mode_0400_in_a_0755_dir_without_newline() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("flannel/sub/wgkey");
        let key = load_or_create(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 44);
        assert!(!text.contains('\n'));
        assert_eq!(decode_key(&text).unwrap(), *key.as_bytes());
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o400);
        let dir_mode = std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777;
        assert_eq!(dir_mode, 0o755);
        // Same key on the next start.
        assert_eq!(load_or_create(&path).unwrap(), key);
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn existing_file_with_newlines_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("wgkey");
        std::fs::write(
            &path,
            format!("{}\n", &ALICE_PRIVATE[..20]) + &ALICE_PRIVATE[20..] + "\r\n",
        )
        .unwrap();
        let key = load_or_create(&path).unwrap();
        assert_eq!(key.public_key().to_string(), ALICE_PUBLIC);
    }

    #[test]
    fn bad_key_file_names_the_file_and_not_the_content() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("wgkey");
        let secret_ish = "c2VjcmV0LWJ1dC10b28tc2hvcnQ=";
        std::fs::write(&path, secret_ish).unwrap();
        let err = load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("could not parse private key from file"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(!err.contains(secret_ish), "{err}");
        // The bad file is left for the operator to look at.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), secret_ish);

        std::fs::write(&path, [0xff, 0xfe, 0x00]).unwrap();
        assert!(
            load_or_create(&path)
                .unwrap_err()
                .to_string()
                .contains("not text")
        );
    }

    #[test]
    fn unreadable_key_path_is_a_read_error() {
        let tmp = tempfile::tempdir().unwrap();
        // A directory where the file should be.
        let err = load_or_create(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("reading the WireGuard key file"), "{err}");
    }

    #[test]
    fn uncreatable_key_file_is_a_create_error() {
        // procfs allows no new directories (not even for root).
        let err = load_or_create(Path::new("/proc/flannel-no-such-dir/wgkey"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("creating the WireGuard key file"), "{err}");
    }

    #[test]
    fn psk_parse_errors_never_echo_the_value() {
        assert!(parse_psk(ALICE_PUBLIC).is_ok());
        let err = parse_psk("bm90LWEta2V5").unwrap_err().to_string();
        assert!(err.contains("could not parse psk"), "{err}");
        assert!(!err.contains("bm90LWEta2V5"), "{err}");
        assert_eq!(format!("{:?}", PrivateKey::generate()), "<redacted>");
    }

    proptest::proptest! {
        #[test]
        fn decode_key_never_panics_and_roundtrips(bytes in proptest::prelude::any::<[u8; 32]>(), junk in ".{0,80}") {
            let text = base64_std_encode(&bytes);
            proptest::prop_assert_eq!(decode_key(&text), Some(bytes));
            proptest::prop_assert_eq!(decode_key(&format!("\n{text}\n")), Some(bytes));
            let _ = decode_key(&junk);
            let _ = parse_psk(&junk);
        }
    }
}
