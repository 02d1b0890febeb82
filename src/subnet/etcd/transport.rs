//! How the etcd client reaches its endpoints (spec 5.1): upstream's per-scheme rule for plain
//! text vs TLS, and reading the PEM files named by --etcd-cafile/--etcd-certfile/--etcd-keyfile.
//!
//! No network I/O; the registry builds the client from these decisions.

use std::path::{Path, PathBuf};

/// Client settings that cannot work; each names the flag value or file.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("no etcd endpoints configured (--etcd-endpoints is empty)")]
    NoEndpoints,
    #[error(
        "etcd endpoints {endpoints} mix plain-text and TLS schemes; with the given TLS files, \
         http:// endpoints use plain text and https:// or scheme-less ones use TLS; use one kind"
    )]
    MixedSchemes { endpoints: String },
    #[error("reading etcd TLS file {path}: {reason}")]
    TlsFile { path: PathBuf, reason: String },
}

/// Whether plain text or TLS is used to reach the endpoints (spec 5.1, per scheme).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Plain,
    Tls,
}

/// Upstream's per-scheme rule: `http://` is plain text even with TLS files, `https://` is TLS
/// even without them, and a scheme-less endpoint uses TLS iff the client certificate is set.
pub fn endpoint_transport(endpoint: &str, client_cert_configured: bool) -> Transport {
    if endpoint.starts_with("http://") {
        Transport::Plain
    } else if endpoint.starts_with("https://") || client_cert_configured {
        Transport::Tls
    } else {
        Transport::Plain
    }
}

/// The one transport for all endpoints; a mix is refused (the client shares one TLS setting).
pub fn common_transport(
    endpoints: &[String],
    client_cert_configured: bool,
) -> Result<Transport, TransportError> {
    let mut kinds = endpoints
        .iter()
        .map(|e| endpoint_transport(e, client_cert_configured));
    let Some(first) = kinds.next() else {
        return Err(TransportError::NoEndpoints);
    };
    if kinds.all(|k| k == first) {
        Ok(first)
    } else {
        Err(TransportError::MixedSchemes {
            endpoints: crate::redact::urls(&endpoints.join(",")),
        })
    }
}

/// The bytes of a PEM file that holds a `-----BEGIN <what>` block.
pub fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, TransportError> {
    let bytes = std::fs::read(path).map_err(|e| TransportError::TlsFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let marker = format!("-----BEGIN {what}");
    let found = String::from_utf8_lossy(&bytes).contains(&marker);
    if !found {
        return Err(TransportError::TlsFile {
            path: path.to_path_buf(),
            reason: format!("no PEM block \"{marker}\" found"),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn http_is_plain_text_even_with_a_client_certificate() {
        assert_eq!(
            endpoint_transport("http://127.0.0.1:2379", true),
            Transport::Plain
        );
        assert_eq!(
            endpoint_transport("http://127.0.0.1:2379", false),
            Transport::Plain
        );
    }

    #[test]
    fn https_is_tls_even_without_files() {
        assert_eq!(
            endpoint_transport("https://127.0.0.1:2379", false),
            Transport::Tls
        );
        assert_eq!(endpoint_transport("https://127.0.0.1:2379", true), Transport::Tls);
    }

    #[test]
    fn no_scheme_is_tls_iff_a_client_certificate_is_set() {
        assert_eq!(endpoint_transport("127.0.0.1:2379", true), Transport::Tls);
        assert_eq!(endpoint_transport("127.0.0.1:2379", false), Transport::Plain);
    }

    #[test]
    fn one_transport_for_all_endpoints() {
        assert_eq!(
            common_transport(&eps(&["http://a:1", "b:2"]), false).ok(),
            Some(Transport::Plain)
        );
        assert_eq!(
            common_transport(&eps(&["https://a:1", "b:2"]), true).ok(),
            Some(Transport::Tls)
        );
        let err = common_transport(&eps(&["http://a:1", "b:2"]), true).expect_err("mixed");
        assert!(err.to_string().contains("http://a:1,b:2"), "{err}");
        assert!(matches!(
            common_transport(&[], false),
            Err(TransportError::NoEndpoints)
        ));
    }

    #[test]
    fn a_tls_file_without_pem_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").expect("write");
        let err = read_pem(&path, "CERTIFICATE").expect_err("no PEM");
        assert!(err.to_string().contains("ca.pem"), "{err}");
        let missing = read_pem(&dir.path().join("missing.pem"), "CERTIFICATE").expect_err("missing");
        assert!(missing.to_string().contains("missing.pem"), "{missing}");
    }
}
