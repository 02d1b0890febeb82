//! Shared test fixtures: network namespaces, a real etcd, the multi-node testbed.
#![allow(dead_code)]
pub mod apiserver;
pub mod etcd;
pub mod netns;
pub mod testbed;
