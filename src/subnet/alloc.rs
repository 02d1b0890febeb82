//! Pure subnet allocation: candidate walk, overlap, compatibility of a lease with the config.
//! Spec: flanneld-behaviour.md section 5.4.
