//! Reading the WireGuard devices for doctor, read-only, from where their configuration lives: a
//! kernel device (link kind `wireguard`) over generic netlink (`GenlWireguard::get_device`, so
//! it works with the daemon stopped); a userspace device (link kind `tun`: the daemon's own
//! implementation, or wireguard-go) over its UAPI socket `<dir>/<name>.sock` with `get=1`
//! (`uapi::parse_get`), bounded by a short timeout so a stopped or wedged daemon cannot hang
//! doctor. It implements `WireguardDevice` so that the wireguard backend's own `WgPeerTable`
//! (ownership rule included) reads the peers through it; `ensure_link` and `set` refuse.
//!
//! The answers carry the device's private key: it stays in memory (doctor derives the public key
//! from it) and is never printed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::backend::wireguard::device::{
    DeviceInfo, DeviceUpdate, EnsuredLink, Implementation, WgError, WireguardDevice,
};
use crate::backend::wireguard::userspace::uapi;
use crate::kernel::wireguard::GenlWireguard;
use crate::kernel::{Link, Netlink};

/// How long a UAPI socket has to answer `get=1`.
pub const UAPI_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest `get=1` answer read (thousands of peers fit).
const MAX_ANSWER: usize = 16 << 20;

/// Reads the devices of the given links, each the way its kind says.
pub struct ReadOnlyDevices {
    /// Link name -> kind (`wireguard`, `tun`).
    kinds: HashMap<String, String>,
    uapi_dir: PathBuf,
    /// Connected only when some device is a kernel one; the error says why it failed.
    genl: Option<Result<GenlWireguard, String>>,
    timeout: Duration,
}

impl ReadOnlyDevices {
    /// For the links of `names` in `links`; connects to the kernel's WireGuard family only when
    /// one of them is a kernel device.
    pub async fn open(links: &[Link], names: &[&str], uapi_dir: &Path) -> ReadOnlyDevices {
        let kinds: HashMap<String, String> = links
            .iter()
            .filter(|l| names.contains(&l.name.as_str()))
            .filter_map(|l| Some((l.name.clone(), l.kind.clone()?)))
            .collect();
        let genl = if kinds.values().any(|k| k == "wireguard") {
            Some(GenlWireguard::connect().await.map_err(|e| e.to_string()))
        } else {
            None
        };
        ReadOnlyDevices {
            kinds,
            uapi_dir: uapi_dir.to_path_buf(),
            genl,
            timeout: UAPI_TIMEOUT,
        }
    }

    /// The UAPI socket of a userspace device.
    pub fn socket_path(&self, name: &str) -> PathBuf {
        self.uapi_dir.join(format!("{name}.sock"))
    }

    /// The kind of the device's link (`wireguard`, `tun`), if it exists.
    pub fn kind(&self, name: &str) -> Option<&str> {
        self.kinds.get(name).map(String::as_str)
    }
}

/// `get=1` on a UAPI socket: the device as it reports itself.
pub async fn uapi_get(path: &Path, timeout: Duration) -> Result<DeviceInfo, String> {
    let exchange = async {
        let mut stream = UnixStream::connect(path).await.map_err(|e| e.to_string())?;
        stream
            .write_all(b"get=1\n\n")
            .await
            .map_err(|e| format!("sending get=1: {e}"))?;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 8192];
        // The answer ends with `errno=N` and an empty line.
        while !answer.ends_with(b"\n\n") {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("reading the answer: {e}"))?;
            if n == 0 {
                return Err("the socket closed before the answer ended".to_string());
            }
            answer.extend_from_slice(&chunk[..n]);
            if answer.len() > MAX_ANSWER {
                return Err(format!("the answer exceeds {MAX_ANSWER} bytes"));
            }
        }
        Ok(answer)
    };
    let answer = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))??;
    let text = String::from_utf8(answer).map_err(|_| "the answer is not text".to_string())?;
    let errno = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("errno="))
        .ok_or("the answer has no errno line")?;
    if errno != "0" {
        return Err(format!("the device answered errno={errno}"));
    }
    uapi::parse_get(&text).map_err(|e| e.to_string())
}

fn refuse(op: &str, name: &str) -> WgError {
    WgError::device(op, name, "flanneld doctor only reads WireGuard devices")
}

#[async_trait::async_trait]
impl WireguardDevice for ReadOnlyDevices {
    fn implementation(&self) -> Implementation {
        if self.genl.is_some() {
            Implementation::Kernel
        } else {
            Implementation::Userspace
        }
    }

    async fn ensure_link(&self, _k: &dyn Netlink, name: &str, _mtu: u32) -> Result<EnsuredLink, WgError> {
        Err(refuse("creating", name))
    }

    async fn get(&self, name: &str) -> Result<Option<DeviceInfo>, WgError> {
        match self.kind(name) {
            None => Ok(None),
            Some("wireguard") => match &self.genl {
                Some(Ok(genl)) => genl
                    .get_device(name)
                    .await
                    .map_err(|e| WgError::device("reading over generic netlink", name, e)),
                Some(Err(e)) => Err(WgError::device("reading over generic netlink", name, e)),
                None => Err(WgError::device("reading", name, "no generic netlink connection")),
            },
            Some(_) => {
                let path = self.socket_path(name);
                uapi_get(&path, self.timeout)
                    .await
                    .map(Some)
                    .map_err(|e| WgError::device(format!("reading over {}", path.display()), name, e))
            }
        }
    }

    async fn set(&self, name: &str, _update: &DeviceUpdate) -> Result<(), WgError> {
        Err(refuse("configuring", name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::peers::{PresharedKey, WgKey};
    use crate::backend::wireguard::device::PeerInfo;
    use crate::backend::wireguard::key::PrivateKey;
    use tokio::net::UnixListener;

    fn tun(name: &str) -> Link {
        Link {
            index: 5,
            name: name.into(),
            kind: Some("tun".into()),
            mtu: 1420,
            mac: None,
            up: true,
            vxlan: None,
            ipip: None,
        }
    }

    /// A UAPI server that answers one `get=1` with `answer` (or never, with `None`).
    fn serve(dir: &Path, name: &str, answer: Option<String>) {
        let listener = UnixListener::bind(dir.join(format!("{name}.sock"))).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let _ = stream.read(&mut buf).await;
            match answer {
                Some(a) => {
                    let _ = stream.write_all(a.as_bytes()).await;
                }
                None => tokio::time::sleep(Duration::from_secs(30)).await,
            }
        });
    }

    #[tokio::test]
    async fn a_userspace_device_is_read_over_its_uapi_socket() {
        let dir = tempfile::tempdir().unwrap();
        let info = DeviceInfo {
            private_key: Some(PrivateKey::from_raw([3; 32])),
            listen_port: 51820,
            peers: vec![PeerInfo {
                public_key: WgKey([1; 32]),
                preshared_key: Some(PresharedKey(WgKey([2; 32]))),
                endpoint: Some("192.0.2.2:51820".parse().unwrap()),
                persistent_keepalive: 25,
                allowed_ips: vec!["198.18.2.0/24".parse().unwrap()],
                ..PeerInfo::default()
            }],
            ..DeviceInfo::default()
        };
        serve(
            dir.path(),
            "flannel-wg",
            Some(format!("{}errno=0\n\n", uapi::format_get(&info))),
        );
        let devices = ReadOnlyDevices::open(&[tun("flannel-wg")], &["flannel-wg"], dir.path()).await;
        assert_eq!(devices.implementation(), Implementation::Userspace);
        let got = devices.get("flannel-wg").await.unwrap().unwrap();
        assert_eq!(got.peers, info.peers);
        assert_eq!(got.listen_port, 51820);
        assert_eq!(devices.get("flannel-wg-v6").await.unwrap(), None, "no such link");
        let err = devices
            .set("flannel-wg", &DeviceUpdate::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("only reads"), "{err}");
    }

    #[tokio::test]
    async fn a_silent_or_missing_socket_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        serve(dir.path(), "flannel-wg", None);
        let mut devices = ReadOnlyDevices::open(&[tun("flannel-wg")], &["flannel-wg"], dir.path()).await;
        devices.timeout = Duration::from_millis(200);
        let err = devices.get("flannel-wg").await.unwrap_err().to_string();
        assert!(
            err.contains("flannel-wg.sock") && err.contains("no answer within"),
            "{err}"
        );
        let missing = ReadOnlyDevices::open(&[tun("wg9")], &["wg9"], dir.path()).await;
        let err = missing.get("wg9").await.unwrap_err().to_string();
        assert!(err.contains("wg9.sock"), "{err}");
        let err = uapi_get(&dir.path().join("nothing.sock"), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(!err.is_empty());
    }

    #[tokio::test]
    async fn an_error_answer_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        serve(dir.path(), "wg0", Some("errno=-22\n\n".into()));
        let err = uapi_get(&dir.path().join("wg0.sock"), UAPI_TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(err, "the device answered errno=-22");
    }
}
