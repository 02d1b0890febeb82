//! subnet.env: render (pure), atomic write, and read-back with upstream's tolerance rules.
//! Spec: flanneld-behaviour.md section 4.
