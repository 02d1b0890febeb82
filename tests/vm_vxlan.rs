//! vxlan in the VM testbed (`make test-vm`): the control that the VM's networking itself works
//! (namespaces, bridge, veth, etcd, the daemons) with a backend this machine can also test
//! natively. Same scenario as tests/e2e_vxlan.rs: three nodes converge to spec 9.1's exact listings
//! and every pod pings every other.

mod e2e_common;
mod support;

use e2e_common::*;

#[test]
#[ignore = "runs inside the VM testbed (make test-vm)"]
fn vxlan_three_nodes_match_the_spec_and_every_pod_pings_every_other_in_the_vm() {
    if !support::is_root() {
        return support::skip("vm_vxlan", "needs root (network namespaces)");
    }
    let Some(_serial) = serial_or_skip("vm_vxlan") else {
        return support::skip("vm_vxlan", "etcd or a network tool is missing");
    };
    three_nodes_match_the_spec_and_ping(Backend::Vxlan, "vmvx");
}
