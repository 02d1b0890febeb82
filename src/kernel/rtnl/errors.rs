//! Errors of the real kernel seam: each names the step and the object (`replacing route
//! 198.18.2.0/24 via 198.18.2.0 dev #5 onlink: ...`), and says whether the request socket must be
//! reopened (closed, stalled or overrun: answers may have been lost).

use std::time::Duration;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;

use super::decode;
use crate::kernel::{KernelError, Op, RT_TABLE_MAIN};

pub(super) fn failed(
    op: &str,
    object: impl std::fmt::Display,
    message: String,
    errno: Option<i32>,
) -> KernelError {
    KernelError::Failed {
        op: op.to_string(),
        object: object.to_string(),
        message,
        errno,
    }
}

pub(super) fn closed(op: &str, object: impl std::fmt::Display) -> KernelError {
    failed(op, object, CLOSED.to_string(), None)
}

pub(super) fn timed_out(op: &str, object: impl std::fmt::Display, after: Duration) -> KernelError {
    failed(
        op,
        object,
        format!("{TIMED_OUT} after {after:?}"),
        Some(libc::ETIMEDOUT),
    )
}

pub(super) const CLOSED: &str = "netlink connection closed";
pub(super) const TIMED_OUT: &str = "no answer from the kernel";
pub(super) const OVERRUN: &str = "netlink socket overrun";

impl KernelError {
    /// The request socket cannot be trusted any more (closed, stalled, or answers were lost).
    pub(super) fn needs_new_socket(&self) -> bool {
        match self {
            KernelError::Failed { message, .. } => {
                message == CLOSED || message == OVERRUN || message.starts_with(TIMED_OUT)
            }
            KernelError::Socket(_) => false,
        }
    }
}

/// The error a netlink error message stands for; `None` for an acknowledgement.
pub(super) fn nack(
    op: &str,
    object: impl std::fmt::Display,
    msg: &NetlinkMessage<RouteNetlinkMessage>,
) -> Option<KernelError> {
    match &msg.payload {
        NetlinkPayload::Error(e) => {
            let errno = decode::errno(e)?;
            Some(failed(
                op,
                object,
                decode::error_text(errno, e, msg.header.flags),
                Some(errno),
            ))
        }
        NetlinkPayload::Overrun(_) => Some(failed(op, object, OVERRUN.to_string(), None)),
        _ => None,
    }
}

/// The step and the object of an op, for error messages.
pub(super) fn describe(op: &Op) -> (&'static str, String) {
    let verb = match op {
        Op::ReplaceRoute(_) => "replacing route",
        Op::DeleteRoute(_) => "deleting route",
        Op::ReplaceNeigh(_) => "replacing neighbour",
        Op::DeleteNeigh(_) => "deleting neighbour",
        Op::ReplaceFdb(_) => "replacing fdb entry",
        Op::DeleteFdb(_) => "deleting fdb entry",
    };
    let object = match op {
        Op::ReplaceRoute(r) | Op::DeleteRoute(r) => {
            let mut s = r.dst.to_string();
            if let Some(gw) = r.gateway {
                s.push_str(&format!(" via {gw}"));
            }
            if let Some(oif) = r.oif {
                s.push_str(&format!(" dev #{oif}"));
            }
            if r.onlink {
                s.push_str(" onlink");
            }
            if r.table != RT_TABLE_MAIN {
                s.push_str(&format!(" table {}", r.table));
            }
            s
        }
        Op::ReplaceNeigh(n) | Op::DeleteNeigh(n) => match n.mac {
            Some(mac) => format!("{} dev #{} lladdr {mac}", n.ip, n.index),
            None => format!("{} dev #{}", n.ip, n.index),
        },
        Op::ReplaceFdb(f) | Op::DeleteFdb(f) => match f.dst {
            Some(dst) => format!("{} dev #{} dst {dst}", f.mac, f.index),
            None => format!("{} dev #{}", f.mac, f.index),
        },
    };
    (verb, object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{Fdb, Neigh, Route};
    use crate::kernel::{MacAddr, NUD_PERMANENT};

    #[test]
    fn op_errors_name_the_step_and_the_object() {
        let mut r = Route::unicast(
            "198.18.2.0/24".parse().unwrap(),
            Some("198.18.2.0".parse().unwrap()),
            Some(5),
        );
        r.onlink = true;
        assert_eq!(
            describe(&Op::ReplaceRoute(r.clone())),
            (
                "replacing route",
                "198.18.2.0/24 via 198.18.2.0 dev #5 onlink".to_string()
            )
        );
        r.table = 100;
        assert_eq!(
            describe(&Op::DeleteRoute(r)).1,
            "198.18.2.0/24 via 198.18.2.0 dev #5 onlink table 100"
        );
        let mac = MacAddr([0x0e, 0, 0, 0, 0, 1]);
        let n = Neigh {
            index: 5,
            ip: "198.18.2.0".parse().unwrap(),
            mac: Some(mac),
            state: NUD_PERMANENT,
        };
        assert_eq!(
            describe(&Op::DeleteNeigh(n)),
            (
                "deleting neighbour",
                "198.18.2.0 dev #5 lladdr 0e:00:00:00:00:01".to_string()
            )
        );
        let f = Fdb {
            index: 5,
            mac,
            dst: Some("192.0.2.2".parse().unwrap()),
            self_flag: true,
            permanent: true,
        };
        assert_eq!(
            describe(&Op::ReplaceFdb(f)),
            (
                "replacing fdb entry",
                "0e:00:00:00:00:01 dev #5 dst 192.0.2.2".to_string()
            )
        );
        let err = failed("deleting link", "#7", "No such device".into(), Some(libc::ENODEV));
        assert_eq!(err.to_string(), "deleting link #7: No such device");
        assert!(err.is_not_found());
    }
}
