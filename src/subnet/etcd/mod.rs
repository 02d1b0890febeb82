//! The etcd v3 subnet manager. Spec: flanneld-behaviour.md section 5.
